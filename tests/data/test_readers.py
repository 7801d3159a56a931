"""Readers: the two-fidelity Li3PS4 files, an ASE db and extxyz with custom keys; masks and units."""

from __future__ import annotations

from pathlib import Path

import ase.db
import ase.io
import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from torch_geometric.data import Batch

from mfwrap.data import GraphSpec, StructureError, keys as K
from mfwrap.data.graph import EV_PER_A3_TO_GPA
from mfwrap.data.readers import LabelledStructure, read_dataset, read_fidelities, to_graphs

LI3PS4_TEST = Path(__file__).parent / "files" / "li3ps4_test.xyz"  # test split of ../shared/data/li3ps4-pbesol-r2scan
LI3PS4_KEYS = {"pbesol": {"energy": "energy", "forces": "forces"}, "r2scan": {"energy": "mtt::r2scan_energy"}}


def test_li3ps4_two_fidelities_from_the_same_frames():
    path = LI3PS4_TEST
    frames = ase.io.read(path, index=":")
    records = read_fidelities(path, LI3PS4_KEYS)
    assert len(records) == 2 * len(frames) == 20
    low, high = records[0::2], records[1::2]
    assert {r.fidelity for r in low} == {"pbesol"} and {r.fidelity for r in high} == {"r2scan"}
    for atoms, lo, hi in zip(frames, low, high):
        assert lo.atoms is hi.atoms and lo.name == hi.name
        assert set(lo.labels) == {"energy", "forces"} and set(hi.labels) == {"energy"}
        assert lo.labels["energy"] == pytest.approx(atoms.get_potential_energy())
        np.testing.assert_array_equal(lo.labels["forces"], atoms.get_forces())
        assert hi.labels["energy"] == pytest.approx(float(atoms.info["mtt::r2scan_energy"]))
        # README: r2SCAN - PBEsol is about -2.58 eV/atom
        assert (hi.labels["energy"] - lo.labels["energy"]) / len(atoms) == pytest.approx(-2.58, abs=0.1)

    graphs = to_graphs(records, GraphSpec(5.0, 3.0), fidelities=["pbesol", "r2scan"])
    batch = Batch.from_data_list(graphs[:4])
    assert batch[K.FIDELITY].tolist() == [0, 1, 0, 1]
    assert batch[K.mask_key(K.ENERGY)].all()
    assert not batch[K.mask_key(K.STRESS)].any() and not batch[K.mask_key(K.MAGMOMS)].any()
    forces_mask = batch[K.mask_key(K.FORCES)]
    assert forces_mask[batch.batch % 2 == 0].all() and not forces_mask[batch.batch % 2 == 1].any()
    assert (batch[K.FORCES][~forces_mask] == 0).all()  # stored, but masked out


def test_misspelt_key_is_an_error():
    with pytest.raises(ValueError, match="mtt::r2scan_enrgy"):
        read_fidelities(LI3PS4_TEST, {"r2scan": {"energy": "mtt::r2scan_enrgy"}})
    with pytest.raises(ValueError, match="unknown target"):
        read_fidelities(LI3PS4_TEST, {"r2scan": {"enrgy": "energy"}})


def _labelled_frames() -> list:
    rng = np.random.default_rng(0)
    frames = []
    for i in range(3):
        atoms = bulk("Fe", "bcc", a=2.87, cubic=True).repeat((1, 1, 2))
        atoms.rattle(0.05, seed=i)
        n = len(atoms)
        results = {"energy": -8.0 * n + i, "stress": rng.normal(size=6) * 0.01, "magmoms": rng.uniform(1, 3, n)}
        if i != 1:  # frame 1 has no forces
            results["forces"] = rng.normal(size=(n, 3))
        atoms.calc = SinglePointCalculator(atoms, **results)
        frames.append(atoms)
    return frames


def test_ase_db_with_calculator_and_custom_keys(tmp_path):
    frames = _labelled_frames()
    path = tmp_path / "data.db"
    with ase.db.connect(path) as db:
        for i, atoms in enumerate(frames):
            extra = {"key_value_pairs": {"scan_energy": -9.0 * len(atoms) + i}} if i != 2 else {}
            db.write(atoms, data={"scan_forces": np.full((len(atoms), 3), float(i))}, **extra)

    records = read_dataset(path, "pbe")
    assert [r.name for r in records] == ["data.db:id=1", "data.db:id=2", "data.db:id=3"]
    for atoms, record in zip(frames, records):
        np.testing.assert_allclose(record.atoms.positions, atoms.positions)
        assert record.labels["energy"] == pytest.approx(atoms.get_potential_energy())
        voigt = atoms.calc.results["stress"]
        xx, yy, zz, yz, xz, xy = voigt * EV_PER_A3_TO_GPA
        np.testing.assert_allclose(record.labels["stress"], [[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
        np.testing.assert_allclose(record.labels["magmoms"], atoms.calc.results["magmoms"])
    assert "forces" in records[0].labels and "forces" not in records[1].labels

    graphs = to_graphs(records, GraphSpec(4.0), fidelities={"pbe": 3}, dtype=torch.float64)
    assert graphs[1][K.mask_key(K.FORCES)].sum() == 0 and graphs[0][K.mask_key(K.FORCES)].all()
    assert graphs[2][K.FIDELITY].item() == 3
    assert torch.equal(graphs[0][K.STRESS][0], torch.tensor(records[0].labels["stress"]))
    # stress in GPa with ASE's sign: a file value of -0.01 eV/Å^3 is -1.602 GPa
    assert graphs[0][K.STRESS][0, 0, 0].item() == pytest.approx(frames[0].calc.results["stress"][0] * 160.21766208)

    scan = read_fidelities(path, {"scan": {"energy": "scan_energy", "forces": "scan_forces"}})
    assert len(scan) == 3 and set(scan[2].labels) == {"forces"}  # frame 3 has no scan energy
    np.testing.assert_array_equal(scan[1].labels["forces"], 1.0)


def test_extxyz_custom_keys_full_stress_and_index(tmp_path):
    frames = _labelled_frames()
    for i, atoms in enumerate(frames):
        atoms.calc = None
        atoms.info["hse_energy"] = -10.0 * i
        atoms.info["hse_stress"] = np.arange(9.0).reshape(3, 3) * 0.001 * (i + 1)
        atoms.arrays["hse_forces"] = np.full((len(atoms), 3), 0.5 * i)
    path = tmp_path / "frames.extxyz"
    ase.io.write(path, frames, format="extxyz")
    keys = {"energy": "hse_energy", "forces": "hse_forces", "stress": "hse_stress", "magmoms": None}
    records = read_dataset(path, "hse", keys, index=slice(1, None))
    assert [r.name for r in records] == ["frames.extxyz:1", "frames.extxyz:2"]
    assert records[1].labels["energy"] == -20.0
    np.testing.assert_allclose(records[0].labels["stress"], np.arange(9.0).reshape(3, 3) * 0.002 * EV_PER_A3_TO_GPA)
    np.testing.assert_array_equal(records[1].labels["forces"], 1.0)
    assert read_dataset(path, "hse", keys, index=0)[0].labels["energy"] == 0.0


def test_label_of_wrong_shape_names_the_frame(tmp_path):
    atoms = bulk("Cu", "fcc", a=3.6).repeat(2)
    atoms.arrays["bad_forces"] = np.zeros((len(atoms), 3))
    atoms.info["bad_stress"] = np.zeros(4)
    path = tmp_path / "bad.extxyz"
    ase.io.write(path, [atoms, atoms])
    with pytest.raises(StructureError, match=r"bad.extxyz:0: stress has shape \(4,\)"):
        read_dataset(path, "x", {"stress": "bad_stress"})
    record = LabelledStructure(atoms, "x", {"forces": np.zeros((len(atoms), 2))}, name="bad.extxyz:7")
    with pytest.raises(StructureError, match=r"bad.extxyz:7: label 'forces' has shape \(8, 2\), expected \(8, 3\)"):
        record.to_graph(GraphSpec(3.0), {"x": 0})
    with pytest.raises(KeyError, match="fidelity 'x' is not one of"):
        record.to_graph(GraphSpec(3.0), {"y": 0})
