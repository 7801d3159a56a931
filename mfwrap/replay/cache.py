"""Building a replay set once: structures, element check, pseudo-labels, cached with provenance.

:func:`build_replay` keeps each labelled set in ``<cache>/replay/<key[:24]>/`` (``<cache>``: the config's
``cache_dir``, else ``$MFWRAP_CACHE``, else ``~/.cache/mfwrap``): ``labels.pt``, the records as tensors,
strings and numbers (read back with ``torch.load(weights_only=True)``, never unpickling code), and
``provenance.json`` (model hash, config, counts per source, labelling seconds, peak memory, versions).
Both are written atomically (:func:`mfwrap.files.write_atomic`).

The key is the SHA-256 of everything the labels depend on: :data:`CACHE_VERSION` and mfwrap's version,
the model's class and ``state_dict`` (every tensor's name, dtype, shape and bytes), the config (without
``cache_dir``), the origin name, labelling fidelity and targets, the user's structures (numbers, positions, cell,
pbc) and the bytes of every file source. An entry is reused only when its stored key equals it exactly;
any change (a fine-tuned weight, another seed, an edited file) labels anew.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import resource
import time
from pathlib import Path
from typing import Any, Callable, Collection, Sequence

import numpy as np
import torch
from ase import Atoms
from torch import nn

from mfwrap.data.readers import LabelledStructure
from mfwrap.files import default_cache_dir, read_torch, save_torch, write_text
from mfwrap.replay.labels import pseudo_label
from mfwrap.replay.structures import SOURCE_WORDS, ReplayConfig, as_atoms, replay_structures

CACHE_VERSION = 1


def model_sha256(model: nn.Module) -> str:
    """SHA-256 of ``model``'s class name and state_dict (names, dtypes, shapes, bytes)."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_key(
    model: nn.Module,
    config: ReplayConfig,
    own: Sequence[Atoms],
    origin: str,
    fidelity: str | None,
    targets: Collection[str] | None = None,
) -> str:
    """The SHA-256 naming a replay set (module docstring)."""
    from mfwrap import __version__

    settings = {k: v for k, v in dataclasses.asdict(config).items() if k != "cache_dir"}
    if not settings.get("md_steps"):  # no dynamics: the key of a set made before the md options existed
        for key in ("md_steps", "md_temperature", "md_timestep"):
            settings.pop(key, None)
    files = {s: hashlib.sha256(Path(s).read_bytes()).hexdigest() for s in config.sources if s not in SOURCE_WORDS}
    head = dict(version=CACHE_VERSION, mfwrap=__version__, config=settings, origin=origin, fidelity=fidelity)
    head["targets"] = None if targets is None else sorted(targets)
    digest = hashlib.sha256(json.dumps({**head, "files": files}, sort_keys=True).encode())
    digest.update(model_sha256(model).encode())
    for atoms in own:
        for array in (atoms.numbers.astype(np.int64), atoms.positions, atoms.cell.array, atoms.pbc):
            digest.update(np.ascontiguousarray(array, dtype=np.float64).tobytes())
    return digest.hexdigest()


def _primitive(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool))


def _to_payload(records: Sequence[LabelledStructure]) -> list[dict[str, Any]]:
    """Records as tensors, strings and numbers (what a weights-only read allows)."""
    return [
        {
            "numbers": torch.from_numpy(r.atoms.numbers.astype(np.int64)),
            "positions": torch.from_numpy(np.ascontiguousarray(r.atoms.positions)),
            "cell": torch.from_numpy(np.ascontiguousarray(r.atoms.cell.array)),
            "pbc": torch.from_numpy(np.asarray(r.atoms.pbc, dtype=bool)),
            "info": {k: v for k, v in r.atoms.info.items() if _primitive(v)},
            "fidelity": r.fidelity,
            "name": r.name,
            "labels": {k: v if _primitive(v) else torch.from_numpy(np.asarray(v)) for k, v in r.labels.items()},
        }
        for r in records
    ]


def _from_payload(payload: list[dict[str, Any]]) -> list[LabelledStructure]:
    records = []
    for item in payload:
        atoms = Atoms(
            numbers=item["numbers"].numpy(),
            positions=item["positions"].numpy(),
            cell=item["cell"].numpy(),
            pbc=item["pbc"].numpy(),
            info=dict(item["info"]),
        )
        labels = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in item["labels"].items()}
        records.append(LabelledStructure(atoms, item["fidelity"], labels, name=item["name"]))
    return records


def replay_dir(config: ReplayConfig, key: str) -> Path:
    """Where the replay set with ``key`` is kept."""
    root = Path(config.cache_dir) if config.cache_dir is not None else default_cache_dir()
    return root / "replay" / key[:24]


def read_cached(directory: Path, key: str) -> list[LabelledStructure] | None:
    """The records cached in ``directory`` if its stored key is ``key``, else None."""
    if not (directory / "labels.pt").is_file():
        return None
    payload = read_torch(directory / "labels.pt")
    if not isinstance(payload, dict) or payload.get("key") != key:
        return None
    return _from_payload(payload["records"])


def build_replay(
    model: nn.Module,
    config: ReplayConfig,
    own_structures: Sequence[Any] = (),
    *,
    origin: str,
    fidelity: str | None = None,
    batch_size: int = 8,
    targets: Collection[str] | None = None,
    log: Callable[[str], None] | None = print,
) -> list[LabelledStructure]:
    """The replay set of ``config`` labelled by the frozen ``model`` as fidelity ``origin``, from the cache
    when an entry with the same key exists (module docstring), else built and cached.

    Args:
        model: the foundation model (a backbone, or a MultiFidelity with ``fidelity`` naming the labeller).
        config: sources, size, perturbations, seed and cache root (:class:`ReplayConfig`).
        own_structures: the user's structures (ase.Atoms or LabelledStructure; their labels are not used).
        origin: the fidelity name the records carry.
        fidelity: the model's fidelity that labels (None for a single-fidelity model).
        batch_size: structures per forward pass while labelling.
        targets: the labels to keep (None: all the model predicts; see :func:`mfwrap.replay.pseudo_label`).
        log: called with one line: structures per source, labelling seconds, peak memory, cache hit or miss.

    Returns:
        the records, source by source in ``config.sources`` order (see :func:`mfwrap.replay.pseudo_label`).

    Raises:
        ValueError: a file source that does not exist, no ``own_structures`` for source "own", or an
            element the model does not know (naming the elements and the source).
    """
    own = [as_atoms(s) for s in own_structures]
    key = cache_key(model, config, own, origin, fidelity, targets)
    directory = replay_dir(config, key)
    cached = read_cached(directory, key)
    if cached is not None:
        provenance = json.loads((directory / "provenance.json").read_text())
        _log(log, origin, provenance, f"cache hit, read from {directory}", hit=True)
        return cached
    start = time.perf_counter()
    made = replay_structures(model, config, own, fidelity=fidelity, batch_size=batch_size)
    structured = time.perf_counter()
    records = pseudo_label(
        model,
        [a for s in made.values() for a in s],
        fidelity=fidelity,
        name=origin,
        batch_size=batch_size,
        targets=targets,
    )
    from mfwrap import __version__

    provenance = {
        "key": key,
        "model_sha256": model_sha256(model),
        "model": type(model).__name__,
        "origin": origin,
        "fidelity": fidelity,
        "targets": None if targets is None else sorted(targets),
        "config": dataclasses.asdict(config),
        "counts": {source: len(structures) for source, structures in made.items()},
        "structure_seconds": round(structured - start, 2),
        "labelling_seconds": round(time.perf_counter() - structured, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "mfwrap": __version__,
    }
    save_torch({"key": key, "records": _to_payload(records)}, directory / "labels.pt")
    write_text(directory / "provenance.json", json.dumps(provenance, indent=2) + "\n")
    _log(log, origin, provenance, f"cache miss, saved to {directory}", hit=False)
    return records


def _log(log: Callable[[str], None] | None, origin: str, provenance: dict[str, Any], cache: str, hit: bool) -> None:
    if log is None:
        return
    counts = provenance["counts"]
    parts = " + ".join(f"{count} {source}" for source, count in counts.items())
    when = " when built" if hit else ""
    log(
        f"replay ({origin}): {parts} = {sum(counts.values())} structures, labelled in "
        f"{provenance['labelling_seconds']} s{when} (peak RSS {provenance['peak_rss_mib']} MiB); {cache}"
    )
