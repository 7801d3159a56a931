"""Every model file committed to the repository still loads and predicts what it predicted when recorded.

``committed_model_predictions.json`` holds, for each committed ``*.pt`` model file, its
predictions (energy eV, forces eV/Å, stress GPa, magmoms μB; float32 as loaded, on the CPU) on a
few fixed structures, which are stored in the same file (atomic numbers, positions Å, cell Å), so
the check depends on nothing but :func:`mfwrap.load` and :func:`mfwrap.predict`. The file names the
git commit whose code computed them. Model files store class paths (``"backbones.chgnet.model:CHGNet"``),
so moving or renaming a stored class breaks this test unless loading translates the old path.

A newly committed model file fails its test until it is recorded with ``python tests/test_committed_models.py``
(which rewrites the JSON with the code of the checkout, so run it only where that code is known to give the
recorded predictions of the files already listed).
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms

import mfwrap

ROOT = Path(__file__).resolve().parents[1]
RECORD = Path(__file__).parent / "committed_model_predictions.json"
HIGH_TEST = ROOT / "mfwrap" / "datasets" / "prebuilt" / "lmfp-v1-small-seed0" / "high_test.xyz.gz"
FIDELITY = "high"  # asked of models with several fidelities; a single-fidelity model is asked for none
# Same CPU kind, same code path: what differs between runs is summation order under other thread counts.
RTOL, ATOL = 1e-6, {"energy": 1e-6, "forces": 1e-6, "stress": 1e-5, "magmoms": 1e-6}


def committed_model_files() -> list[str]:
    """Paths (relative to the repository root) of the ``*.pt`` files git tracks."""
    listed = subprocess.run(["git", "ls-files", "*.pt"], cwd=ROOT, capture_output=True, text=True, check=True)
    return sorted(listed.stdout.split())


def structure_from_record(entry: dict) -> Atoms:
    return Atoms(numbers=entry["numbers"], positions=entry["positions"], cell=entry["cell"], pbc=True)


def predictions(model_path: Path, structures: list[Atoms]) -> list[dict[str, list]]:
    """Predictions of the model in ``model_path`` for ``structures``, as JSON-ready lists."""
    model = mfwrap.load(model_path)
    fidelity = FIDELITY if len(getattr(model, "fidelity_names", ())) > 1 else None
    return [
        {key: np.asarray(value).tolist() for key, value in result.items()}
        for result in mfwrap.predict(model, structures, fidelity=fidelity)
    ]


def record_predictions() -> None:
    """Write the JSON record: three frames of the packaged LMFP high-fidelity test split, every committed model."""
    with gzip.open(HIGH_TEST, "rt") as handle:
        frames = ase.io.read(handle, index=":3", format="extxyz")
    structures = [
        {
            "source": f"{HIGH_TEST.relative_to(ROOT)} frame {i}",
            "numbers": frame.numbers.tolist(),
            "positions": frame.positions.tolist(),
            "cell": np.asarray(frame.cell).tolist(),
        }
        for i, frame in enumerate(frames)
    ]
    atoms = [structure_from_record(entry) for entry in structures]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
    record = {
        "commit": commit.stdout.strip(),
        "fidelity": FIDELITY,
        "structures": structures,
        "models": {path: predictions(ROOT / path, atoms) for path in committed_model_files()},
    }
    text = json.dumps(record, indent=1)
    for _ in range(2):  # one line per innermost list of numbers, then per list of those
        text = re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda match: "[" + " ".join(match.group(1).split()) + "]", text)
    RECORD.write_text(text + "\n")


def test_committed_model_files_exist():
    assert committed_model_files(), "no committed *.pt model file found: is this a git checkout?"


@pytest.mark.parametrize("path", committed_model_files())
def test_committed_model_file_predicts_as_recorded(path):
    record = json.loads(RECORD.read_text())
    script = Path(__file__).relative_to(ROOT)
    assert path in record["models"], f"{path} has no recorded predictions: run python {script}"
    structures = [structure_from_record(entry) for entry in record["structures"]]
    expected = record["models"][path]
    got = predictions(ROOT / path, structures)
    assert len(got) == len(expected)
    for index, (new, old) in enumerate(zip(got, expected)):
        assert sorted(new) == sorted(old), f"{path}, structure {index}: predicted quantities changed"
        for key in old:
            np.testing.assert_allclose(
                new[key], old[key], rtol=RTOL, atol=ATOL[key], err_msg=f"{path}, structure {index}: {key}"
            )


if __name__ == "__main__":
    import sys

    # run as a script, tests/ leads sys.path, and its backbones/ folder would shadow the package (which
    # model_file then refuses to import): read model files as the tests do, from the repository root
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).parent]
    record_predictions()
