"""How far apart are the LMFP set's two fidelities? The low-fidelity teacher as a predictor of the high.

Multi-fidelity training can only borrow from the low fidelity what the two fidelities share. This
benchmark measures the gap directly: the low-fidelity teacher (CHGNet 0.3.0) labels the
high-fidelity frames (labelled by CHGNet r2SCAN), and we report its error against the high labels:

* energy: raw, and after a per-element linear correction ``E_high - E_low ≈ Σ_Z n_Z w_Z`` fitted by
  least squares on the high-fidelity *training* frames (the correction mechanism C learns), tested
  on the high-fidelity test frames; meV/atom;
* forces (meV/Å) and stress (GPa): MAE of low vs high on the test frames, next to the MAE of
  predicting zero (the labels' scale) and the cosine between the low and high force vectors.

A model trained only on low-fidelity data cannot beat these numbers on the high fidelity (with a
perfect fit it reproduces the low teacher); MF wins where the high-fidelity data are too few to
learn the function but enough to learn the (smaller, smoother) difference.

Run: ``python benchmarks/fidelity_gap.py [--size small] [--out benchmarks/results/fidelity_gap.json]``
(needs ``chgnet``; about a minute on one CPU core).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np


def _element_matrix(frames, elements):
    return np.array([[np.count_nonzero(f.atoms.numbers == z) for z in elements] for f in frames], dtype=np.float64)


def measure(size: str = "small") -> dict:
    import torch

    from mfwrap.datasets.lmfp import load_lmfp
    from mfwrap.datasets.lmfp_frames import TEACHERS
    from mfwrap.datasets.teachers import load_teacher, torch_threads

    data = load_lmfp(size, 0)
    train, test = data["high_train"], data["high_test"]
    start = time.perf_counter()
    with torch_threads(1):
        teacher = load_teacher(TEACHERS["low"])
        low_train = teacher([f.atoms for f in train], "efs")
        low_test = teacher([f.atoms for f in test], "efs")
    seconds = time.perf_counter() - start

    elements = sorted({int(z) for f in train + test for z in f.atoms.numbers})
    n_train, n_test = _element_matrix(train, elements), _element_matrix(test, elements)
    e_high = lambda frames: np.array([f.labels["energy"] for f in frames])  # noqa: E731  eV, total
    e_low = lambda preds, frames: np.array([p["e"] * len(f.atoms) for p, f in zip(preds, frames)])  # noqa: E731
    gap_train = e_high(train) - e_low(low_train, train)
    w, *_ = np.linalg.lstsq(n_train, gap_train, rcond=None)
    atoms = n_test.sum(1)
    raw = np.abs(e_high(test) - e_low(low_test, test)) / atoms
    corrected = np.abs(e_high(test) - e_low(low_test, test) - n_test @ w) / atoms
    high_only = np.linalg.lstsq(n_train, e_high(train), rcond=None)[0]  # composition model alone, high data

    f_high = np.concatenate([f.labels["forces"] for f in test])
    f_low = np.concatenate([np.asarray(p["f"]) for p in low_test])
    s_high = np.stack([f.labels["stress"] for f in test])
    s_low = np.stack([0.5 * (np.asarray(p["s"]) + np.asarray(p["s"]).T) for p in low_test])
    cosine = (f_high * f_low).sum(1) / np.maximum(np.linalg.norm(f_high, axis=1) * np.linalg.norm(f_low, axis=1), 1e-12)
    return {
        "dataset": f"lmfp {size}, seed 0: {len(train)} high-fidelity training, {len(test)} test frames",
        "low_teacher": f"CHGNet {TEACHERS['low']}",
        "high_teacher": f"CHGNet {TEACHERS['high']}",
        "energy_meV_per_atom": {
            "low_vs_high_raw_mae": 1000 * float(raw.mean()),
            "low_plus_composition_correction_mae": 1000 * float(corrected.mean()),
            "composition_model_alone_mae": 1000 * float((np.abs(e_high(test) - n_test @ high_only) / atoms).mean()),
        },
        "forces_meV_per_A": {
            "low_vs_high_mae": 1000 * float(np.abs(f_high - f_low).mean()),
            "zero_prediction_mae": 1000 * float(np.abs(f_high).mean()),
            "median_cosine_low_high": float(np.median(cosine)),
        },
        "stress_GPa": {
            "low_vs_high_mae": float(np.abs(s_high - s_low).mean()),
            "zero_prediction_mae": float(np.abs(s_high).mean()),
        },
        "teacher_seconds": seconds,
        "machine": {"cpu": platform.machine(), "threads": 1, "torch": torch.__version__},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="small")
    parser.add_argument("--out", default="benchmarks/results/fidelity_gap.json")
    args = parser.parse_args()
    result = measure(args.size)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
