"""Training data from a config's ``data`` section: bad files fail naming file and frame, partial
labels are masked and logged through :func:`load_data` (what ``mfwrap train`` calls)."""

from __future__ import annotations

import logging

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from torch_geometric.data import Batch

from mfwrap.data import GraphSpec, StructureError
from mfwrap.data import keys as K
from mfwrap.train.data import DataConfig, Source, load_data

SPEC = GraphSpec(3.0)


def _write(path, n_frames: int, without_forces: tuple[int, ...] = (), nan_energy_at: int | None = None) -> None:
    frames = []
    for i in range(n_frames):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.rattle(0.02, seed=i)
        results = {"energy": np.nan if i == nan_energy_at else -14.0 + i}
        if i not in without_forces:
            results["forces"] = np.full((len(atoms), 3), 0.1 * i)
        atoms.calc = SinglePointCalculator(atoms, **results)
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")


def test_partial_labels_are_masked_and_logged_per_source(tmp_path, caplog):
    _write(tmp_path / "low.xyz", 6)
    _write(tmp_path / "high.xyz", 8, without_forces=(1, 2, 6))
    config = DataConfig(
        fidelities=["low", "high"],
        train=[
            {"path": str(tmp_path / "low.xyz"), "fidelity": "low"},
            {"path": str(tmp_path / "high.xyz"), "fidelity": "high", "limit": 5},
        ],
    )
    with caplog.at_level(logging.WARNING, logger="mfwrap.data"):
        train, val, test = load_data(config, SPEC)
    assert [r.getMessage() for r in caplog.records] == [
        "high.xyz (fidelity 'high'): forces absent in 2 of 5 frames (masked)"
    ]
    assert len(train) == 11 and val is None and test is None
    batch = Batch.from_data_list(train)
    per_frame_forces_mask = [bool(g[K.mask_key(K.FORCES)].all()) for g in train]
    assert per_frame_forces_mask == [True] * 6 + [True, False, False, True, True]
    np.testing.assert_array_equal(batch[K.mask_key(K.FORCES)].numpy(), np.repeat(per_frame_forces_mask, 4))
    assert batch[K.FIDELITY].tolist() == [0] * 6 + [1] * 5


def test_malformed_frame_in_a_source_names_file_and_frame(tmp_path):
    _write(tmp_path / "train.xyz", 4)
    _write(tmp_path / "val.xyz", 4)
    lines = (tmp_path / "val.xyz").read_text().splitlines()
    lines[2 * 6] = "7"  # frame 2 says 7 atoms, has 4
    (tmp_path / "val.xyz").write_text("\n".join(lines) + "\n")
    config = DataConfig(
        train=[{"path": str(tmp_path / "train.xyz"), "fidelity": "dft"}],
        val=[{"path": str(tmp_path / "val.xyz"), "fidelity": "dft"}],
    )
    with pytest.raises(StructureError, match=r"^val.xyz: frame 2 \(line 13\): .*fewer atom lines than 7"):
        load_data(config, SPEC)
    config.val[0].limit = 2  # reading stops before the bad frame
    assert len(load_data(config, SPEC)[1]) == 2


def test_nan_label_in_a_source_names_file_frame_and_target(tmp_path):
    _write(tmp_path / "train.xyz", 5, nan_energy_at=3)
    config = DataConfig(train=[{"path": str(tmp_path / "train.xyz"), "fidelity": "dft"}])
    with pytest.raises(StructureError, match=r"^train.xyz: frame 3: energy has non-finite values"):
        load_data(config, SPEC)


def test_source_without_labels_or_with_a_bad_limit_is_an_error(tmp_path):
    ase.io.write(tmp_path / "bare.xyz", [bulk("Cu", "fcc", a=3.6, cubic=True)] * 3, format="extxyz")
    config = DataConfig(train=[{"path": str(tmp_path / "bare.xyz"), "fidelity": "dft"}])
    with pytest.raises(ValueError, match=r"bare.xyz: no frame with a label at fidelity 'dft'"):
        load_data(config, SPEC)
    for limit in (0, -3):
        with pytest.raises(ValueError, match=f"limit must be a positive integer, got {limit}"):
            Source(path="x.xyz", fidelity="dft", limit=limit)


def test_a_registered_dataset_gives_the_suites_frames(monkeypatch, tmp_path):
    """data: {lmfp: ...} and the benchmark suite split by one rule: same options, same frames."""
    from mfwrap.bench import runner
    from mfwrap.bench.grid import LEVELS, RunSpec

    monkeypatch.setenv("MFWRAP_CACHE", str(tmp_path / "cache"))
    config = DataConfig.from_dict({"lmfp": {"seed": 2, "n_high": 25, "n_low": 40, "n_val": 5}})
    assert config.fidelities == ["low", "high"] and config.dataset == "lmfp"
    train, val, test = load_data(config, SPEC)
    # the quick level holds out 5 validation frames and has 40 low-fidelity ones
    suite = runner.make_splits(RunSpec("x", "multi_fidelity", 25, None, "paper", 2), LEVELS["quick"])
    energies = lambda graphs: [float(g[K.ENERGY]) for g in graphs]  # noqa: E731
    labels = lambda records: [float(r.labels["energy"]) for r in records]  # noqa: E731
    assert energies(train) == pytest.approx(labels(suite.train_low + suite.train_high), rel=1e-6)
    assert energies(val) == pytest.approx(labels(suite.val), rel=1e-6) and len(test) == len(suite.test) == 50
    assert [int(g[K.FIDELITY]) for g in train] == [0] * 40 + [1] * 25


@pytest.mark.parametrize(
    "data, message",
    [
        ({"lmfp": {}, "li3ps4": {}}, r"one dataset at a time, got \['lmfp', 'li3ps4'\]"),
        ({"lmfp": {"n_hihg": 3}}, r"data.lmfp: unknown key\(s\) \['n_hihg'\]; known are \['size', 'seed', 'n_high'"),
        ({"lmfp": {}, "train": [{"path": "x.xyz", "fidelity": "low"}]}, "give either sources .* or the dataset 'lmfp'"),
        ({"li3ps4": {}, "fidelities": ["pbe", "r2scan"]}, r"fidelities \['pbe', 'r2scan'\] lack \['pbesol'\]"),
        ({"validation": []}, r"unknown key\(s\) \['validation'\]; known are \['fidelities', 'test', 'train', 'val'\]"),
        ({}, r"give training sources \(data.train\) or a registered dataset"),
    ],
)
def test_bad_data_sections_are_one_clear_error(data, message):
    with pytest.raises(ValueError, match=message):
        DataConfig.from_dict(data)
