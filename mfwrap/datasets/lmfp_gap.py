"""The LMFP set with a dial on its fidelity gap: the low-fidelity labels moved toward the high teacher.

On every low-fidelity training frame of the LMFP set, label

    y_α = y_high + α (y_low − y_high)        for energy (eV), forces (eV/Å) and stress (GPa),

where y_low is the CHGNet 0.3.0 label the set ships and y_high the CHGNet r2SCAN teacher's
prediction on the same frame. α = 1 is the shipped set; α = 0 makes the low fidelity the high
teacher itself (MF's low-fidelity frames then carry high-fidelity information under another
fidelity index); in between, the gap shrinks linearly in every target, energy offsets included. A
mixture of two potentials is a potential (forces stay −∇E, stress the strain derivative), so every
α gives a physically consistent low fidelity. The structures, the high-fidelity frames and the test
set are the shipped ones, and the low fidelity still has no magmoms: only the size of the gap changes.
The benchmark suite's ``fidelity_gap`` experiment trains MF on ``dataset="lmfp-gap<100·α>"`` to
measure how MF's advantage depends on the gap, all else equal.

The high teacher's labels of the low-fidelity frames of the small seed-0 set ship with the package
(``prebuilt/lmfp-v1-small-seed0/low_train_by_high_teacher.xyz.gz``, with the SHA-256 of the
low-fidelity file it labels); other sets are labelled once (needs ``chgnet``, about a minute per 100
frames on one core) into the dataset's cache directory.

Command line (rebuilds the shipped file): ``python -m mfwrap.datasets.lmfp_gap --size small --out DIR``.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import ase.io

from mfwrap.data.readers import LabelledStructure, read_dataset
from mfwrap.datasets.lmfp import _sha256, dataset_dir, load_lmfp, prebuilt_dir
from mfwrap.files import write_atomic, write_text

RELABELLED = "low_train_by_high_teacher.xyz"
GAP_TARGETS = ("energy", "forces", "stress")
GAP_PREFIX = "lmfp-gap"


def gap_of(dataset: str) -> float:
    """α of a dataset name ``"lmfp-gap<percent>"`` (e.g. "lmfp-gap50" → 0.5)."""
    if not dataset.startswith(GAP_PREFIX) or not dataset[len(GAP_PREFIX) :].isdigit():
        raise ValueError(f"{dataset!r} is not a gap-dial dataset name ('{GAP_PREFIX}<percent>', e.g. '{GAP_PREFIX}50')")
    return int(dataset[len(GAP_PREFIX) :]) / 100


def label_low_with_high_teacher(low_train: list[LabelledStructure], path: Path) -> None:
    """Write the high teacher's (CHGNet r2SCAN) energy, forces and stress of each low-fidelity frame
    to the extxyz file ``path`` (frame order kept)."""
    from mfwrap.datasets.lmfp_frames import TEACHERS
    from mfwrap.datasets.teachers import load_teacher, store_prediction, torch_threads

    with torch_threads(1):
        predictions = load_teacher(TEACHERS["high"])([r.atoms for r in low_train], "efs")
    frames = [store_prediction(r.atoms.copy(), p) for r, p in zip(low_train, predictions)]
    text = io.StringIO()
    ase.io.write(text, frames, format="extxyz")
    write_text(path, text.getvalue())


def high_teacher_labels(
    size: str = "small", seed: int = 0, cache_dir: str | os.PathLike | None = None
) -> list[LabelledStructure]:
    """The high teacher's labels of the LMFP low-fidelity training frames (fidelity "high"), in
    the order of ``load_lmfp(size, seed)["low_train"]``: from the cache, else the packaged copy,
    else labelled now."""
    directory = dataset_dir(size, seed, cache_dir)
    low_train = load_lmfp(size, seed, cache_dir)["low_train"]
    path = directory / RELABELLED
    low_sha = _sha256(directory / "low_train.xyz")
    stamp = directory / (RELABELLED + ".json")
    if not (path.is_file() and stamp.is_file() and json.loads(stamp.read_text()).get("low_train_sha256") == low_sha):
        packaged = prebuilt_dir(size, seed) / (RELABELLED + ".gz")
        packaged_stamp = prebuilt_dir(size, seed) / (RELABELLED + ".json")
        if packaged.is_file() and json.loads(packaged_stamp.read_text()).get("low_train_sha256") == low_sha:
            with gzip.open(packaged, "rb") as source:  # atomic: runs side by side may install it at once
                write_atomic(path, lambda target: shutil.copyfileobj(source, target))
        else:
            label_low_with_high_teacher(low_train, path)
        write_text(stamp, json.dumps({"low_train_sha256": low_sha}))
    relabelled = read_dataset(path, fidelity="high")
    if len(relabelled) != len(low_train) or any(
        (a.atoms.numbers != b.atoms.numbers).any() or abs(a.atoms.positions - b.atoms.positions).max() > 1e-6
        for a, b in zip(relabelled, low_train)
    ):
        raise ValueError(
            f"{path}: the high teacher's labels do not match the low-fidelity frames of lmfp {size} seed {seed}"
        )
    return relabelled


def with_gap(
    low_train: list[LabelledStructure], by_high: list[LabelledStructure], alpha: float
) -> list[LabelledStructure]:
    """Low-fidelity frames labelled y_high + α (y_low − y_high) (energy, forces, stress; module docstring)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"the gap dial α must be in [0, 1], got {alpha}")
    moved = []
    for low, high in zip(low_train, by_high, strict=True):
        labels = dict(low.labels)
        for target in GAP_TARGETS:
            labels[target] = (1.0 - alpha) * high.labels[target] + alpha * low.labels[target]  # exact at α = 0 and 1
        moved.append(replace(low, labels=labels))
    return moved


def load_lmfp_gap(
    alpha: float, size: str = "small", seed: int = 0, cache_dir: str | os.PathLike | None = None
) -> dict[str, list[LabelledStructure]]:
    """``load_lmfp(size, seed)`` with the low-fidelity labels at gap α (module docstring)."""
    data = dict(load_lmfp(size, seed, cache_dir))
    data["low_train"] = with_gap(data["low_train"], high_teacher_labels(size, seed, cache_dir), alpha)
    return data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="directory for the gzipped file and its stamp")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    low_train = load_lmfp(args.size, args.seed)["low_train"]
    directory = dataset_dir(args.size, args.seed)
    path = out / RELABELLED
    label_low_with_high_teacher(low_train, path)
    with open(path, "rb") as source, gzip.GzipFile(out / (RELABELLED + ".gz"), "wb", mtime=0) as target:
        shutil.copyfileobj(source, target)
    path.unlink()
    (out / (RELABELLED + ".json")).write_text(json.dumps({"low_train_sha256": _sha256(directory / "low_train.xyz")}))


if __name__ == "__main__":
    main()
