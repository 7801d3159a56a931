"""Other chemistries: the out-of-domain and forgetting evaluation set of a model fine-tuned on LMFP.

The structures are the ``"test"`` part of :mod:`mfwrap.datasets.prototypes` (AFLOW prototypes whose
label hashes to the test half; the replay pool of :mod:`mfwrap.replay` draws only from the other half,
so the two never share a prototype), decorated with :data:`ELEMENTS`: the prototypes module's
``DEFAULT_ELEMENTS`` without LMFP's Li, Mn, Fe, P and O, so no structure here is an LMFP one, and
brought near the equilibrium volume of CHGNet 0.3.0 (the low teacher) before strain and rattle.

Each structure is labelled by the two teachers of LMFP (:data:`mfwrap.datasets.lmfp_frames.TEACHERS`),
with the same tasks: ``high`` = CHGNet r2SCAN (energy, forces, stress, magmoms), ``low`` = CHGNet 0.3.0
(energy, forces, stress); the fidelity names are LMFP's, so a model trained on LMFP evaluates here
as it is: the high fidelity for the out-of-domain error, the low one for forgetting.

A built set is a directory ``high.xyz``, ``low.xyz`` (extxyz, ASE units) and ``manifest.json`` (n, seed,
elements, SHA-256 of both files and of the teacher checkpoints, package versions), in
``<cache>/other_chemistries/v<FORMAT_VERSION>-n<n>-seed<seed>-<teachers>`` where ``<cache>`` is
``cache_dir``, else ``$MFWRAP_CACHE``, else ``~/.cache/mfwrap``, and ``<teachers>`` starts the SHA-256
of the teachers' checkpoint hashes (other weights, another directory). It is read back, after checking
the files against the manifest, like LMFP's (:func:`mfwrap.datasets.lmfp.read_lmfp`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import ase.io
import numpy as np

from mfwrap.data.readers import LabelledStructure
from mfwrap.datasets.lmfp import _provenance, _sha256, read_lmfp
from mfwrap.datasets.lmfp_frames import _LABEL_TASK, TEACHERS
from mfwrap.datasets.prototypes import DEFAULT_ELEMENTS, prototype_structures
from mfwrap.datasets.teachers import load_teacher, store_prediction
from mfwrap.files import default_cache_dir

FORMAT_VERSION = 1
FIDELITIES = ("high", "low")
LMFP_ELEMENTS = (3, 8, 15, 25, 26)  # Li, O, P, Mn, Fe
ELEMENTS: tuple[int, ...] = tuple(z for z in DEFAULT_ELEMENTS if z not in LMFP_ELEMENTS)


def structures(n: int = 100, seed: int = 0, device: str = "cpu") -> list[ase.Atoms]:
    """The ``n`` unlabelled structures of the set: prototypes' "test" part, :data:`ELEMENTS`, ``seed``,
    brought near the low teacher's (CHGNet 0.3.0) equilibrium volume before strain and rattle."""
    teacher = load_teacher(TEACHERS["low"], device)

    def pressure(frames: list[ase.Atoms]) -> np.ndarray:
        return np.array([-np.trace(p["s"]) / 3.0 for p in teacher(frames, "efs")])

    return prototype_structures(n, elements=ELEMENTS, seed=seed, part="test", pressure=pressure)


def dataset_dir(n: int = 100, seed: int = 0, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where :func:`load_other_chemistries` keeps the set for (n, seed) and the installed teachers."""
    checkpoints = json.dumps(_provenance()["teacher_checkpoints_sha256"], sort_keys=True)
    teachers = hashlib.sha256(checkpoints.encode()).hexdigest()[:12]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "other_chemistries" / f"v{FORMAT_VERSION}-n{n}-seed{seed}-{teachers}"


def build_other_chemistries(out: Path, n: int = 100, seed: int = 0, *, device: str = "cpu") -> Path:
    """Label the structures with both teachers into the directory ``out`` (created atomically)."""
    start = time.perf_counter()
    frames = structures(n, seed, device)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        for fidelity in FIDELITIES:
            teacher = load_teacher(TEACHERS[fidelity], device)
            predictions = teacher(frames, _LABEL_TASK[fidelity])
            labelled = [store_prediction(atoms.copy(), p) for atoms, p in zip(frames, predictions)]
            for atoms in labelled:
                atoms.info.update(fidelity=fidelity, teacher=f"chgnet-{TEACHERS[fidelity]}")
            ase.io.write(staging / f"{fidelity}.xyz", labelled, format="extxyz")
        manifest = {
            "dataset": "other_chemistries",
            "format_version": FORMAT_VERSION,
            "n": n,
            "seed": seed,
            "elements": list(ELEMENTS),
            "part": "test",
            "teachers": {f: f"chgnet {m}" for f, m in TEACHERS.items()},
            "tasks": dict(_LABEL_TASK),
            "files": {f"{f}.xyz": {"frames": len(frames), "sha256": _sha256(staging / f"{f}.xyz")} for f in FIDELITIES},
            "build_seconds": round(time.perf_counter() - start, 1),
            **_provenance(),
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
        try:
            os.replace(staging, out)
        except OSError:  # another process built it first
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def load_other_chemistries(
    n: int = 100, seed: int = 0, cache_dir: str | os.PathLike | None = None, *, device: str = "cpu"
) -> dict[str, list[LabelledStructure]]:
    """``{"high": [...], "low": [...]}``: the same ``n`` structures labelled by CHGNet r2SCAN (fidelity
    "high": energy eV, forces eV/Å, stress GPa, magmoms μB) and by CHGNet 0.3.0 ("low": no magmoms),
    ``high[i].atoms`` equal to ``low[i].atoms``; built on first use (both teachers, ``device``), then
    read from the cache (module docstring). ``atoms.info`` keeps "prototype" (the AFLOW label)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    directory = dataset_dir(n, seed, cache_dir)
    if not (directory / "manifest.json").exists():
        build_other_chemistries(directory, n, seed, device=device)
    return read_lmfp(directory, FIDELITIES)
