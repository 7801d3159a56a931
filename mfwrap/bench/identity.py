"""What a run is: everything that determines it, so that a finished run is reused only for the same run.

A run's identity (:func:`run_identity`) is a JSON dict of

* ``level`` and the level's settings a run depends on (LMFP size, epochs, ceiling and patience of the
  converged protocol, validation frames, what "all low-fidelity frames" means);
* ``dataset`` and ``dataset_version`` (:func:`dataset_version`: a hash of the files it is read from);
* ``backbone``, its class path and its constructor arguments at the level;
* ``method``: its name, the baseline it trains, its model and experiment overrides and its trainer-option
  rule; the mechanisms;
* ``protocol``, ``seed``, ``n_high``, ``n_low``, ``region``; the runner's batch size and learning rate;
* ``model_file_version``: the format version of the model and checkpoint files (:data:`mfwrap.model_file.VERSION`).

The experiment is not part of it: the same run in two experiments is one run (the runner trains it once).
Compiled or eager training steps are not either (the result records which, ``compiled_steps``).
``result.json`` stores the identity; a result written before identities were recorded has the identity
its spec and level give under this code (:func:`identity_of`), which is how the committed reports restore.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from typing import Any

from mfwrap.bench.grid import LEVELS, RunSpec
from mfwrap.bench.methods import METHODS

LEVEL_SETTINGS = ("lmfp_size", "epochs", "max_epochs", "patience", "plateau_patience", "n_val", "n_low_all")
SHARED_PRETRAINING = (  # what a low-fidelity pre-training stage depends on (with its trainer config)
    "level",
    "level_settings",
    "dataset",
    "dataset_version",
    "backbone",
    "backbone_class",
    "backbone_kwargs",
    "seed",
    "n_low",
    "model_file_version",
)


@functools.cache
def dataset_version(dataset: str, size: str | None) -> str:
    """The first 16 hex digits of the SHA-256 of the files ``dataset`` (at ``size``) is read from as mfwrap
    ships them (each file's name and bytes, in name order): Li3PS4's extxyz files, the LMFP set's prebuilt
    copy (its low-fidelity relabelling by the high teacher, which the gap variants read, included); an LMFP
    size that ships no copy (built on first use) by its recipe and format version instead."""
    from mfwrap.datasets.registry import LI3PS4_DIR, get_dataset

    family = get_dataset(dataset).family
    digest = hashlib.sha256()
    if family == "li3ps4":
        files = sorted(LI3PS4_DIR.glob("*.xyz"))
    elif family == "lmfp":
        from mfwrap.datasets.lmfp import FORMAT_VERSION, prebuilt_dir
        from mfwrap.datasets.lmfp_frames import SIZES

        files = sorted(p for p in prebuilt_dir(size or "small").glob("*") if p.is_file())
        if not files:
            digest.update(json.dumps([FORMAT_VERSION, dataclasses.asdict(SIZES[size])], sort_keys=True).encode())
    else:
        raise ValueError(f"dataset {dataset!r}: no version rule in mfwrap.bench.identity.dataset_version")
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def run_identity(spec: RunSpec, level: str) -> dict[str, Any]:
    """The identity of ``spec`` run at ``level`` (module docstring), as JSON reads it back."""
    from mfwrap.bench.backbones import BACKBONES
    from mfwrap.bench.runner import BATCH_SIZE, LEARNING_RATE
    from mfwrap.datasets.registry import get_dataset
    from mfwrap.model_file import VERSION

    settings = LEVELS[level]
    method, backbone = METHODS[spec.method], BACKBONES[spec.backbone]
    size = settings.lmfp_size if get_dataset(spec.dataset).sizes else None
    identity = {
        "level": level,
        "level_settings": {key: getattr(settings, key) for key in LEVEL_SETTINGS},
        "dataset": spec.dataset,
        "dataset_version": dataset_version(spec.dataset, size),
        "backbone": spec.backbone,
        "backbone_class": backbone.class_path,
        "backbone_kwargs": backbone.kwargs_at(level),
        "method": {
            "name": spec.method,
            "trains": method.trains,
            "model": dict(method.model),
            "experiment": dict(method.experiment),
            "train_options": method.train_options.__name__,
        },
        "mechanisms": spec.mechanisms,
        "protocol": spec.protocol,
        "seed": spec.seed,
        "n_high": spec.n_high,
        "n_low": spec.n_low,
        "region": spec.region,
        "batch_size": BATCH_SIZE,
        "lr": LEARNING_RATE,
        "model_file_version": VERSION,
    }
    return json.loads(json.dumps(identity))


def identity_of(result) -> dict[str, Any]:
    """A :class:`mfwrap.bench.result.RunResult`'s identity: the stored one, else its spec's at its level."""
    return result.identity if result.identity is not None else run_identity(result.spec, result.level)


def differences(found: dict[str, Any], wanted: dict[str, Any], keys=None) -> list[str]:
    """The differing keys (of ``keys``, default all, in the identity's order) as "key: found ≠ wanted"."""
    keys = keys or list(dict.fromkeys([*wanted, *found]))
    return [f"{k}: {found.get(k)!r} ≠ {wanted.get(k)!r}" for k in keys if found.get(k) != wanted.get(k)]
