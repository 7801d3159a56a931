"""Readers: the two-fidelity Li3PS4 files, an ASE db and extxyz with custom keys; masks and units."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import ase.db
import ase.io
import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from torch_geometric.data import Batch

from mfwrap.data import GraphSpec, StructureError
from mfwrap.data import keys as K
from mfwrap.data.graph import EV_PER_A3_TO_GPA
from mfwrap.data.readers import (
    LabelKeyError,
    LabelledStructure,
    read_dataset,
    read_fidelities,
    read_structures,
    to_graphs,
)

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
    assert [r.name for r in records] == ["data.db: row id=1", "data.db: row id=2", "data.db: row id=3"]
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
    assert [r.name for r in records] == ["frames.extxyz: frame 1", "frames.extxyz: frame 2"]
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
    with pytest.raises(StructureError, match=r"^bad.extxyz: frame 0: stress has shape \(4,\)"):
        read_dataset(path, "x", {"stress": "bad_stress"})
    record = LabelledStructure(atoms, "x", {"forces": np.zeros((len(atoms), 2))}, name="bad.extxyz: frame 7")
    with pytest.raises(
        StructureError, match=r"bad.extxyz: frame 7: label 'forces' has shape \(8, 2\), expected \(8, 3\)"
    ):
        record.to_graph(GraphSpec(3.0), {"x": 0})
    with pytest.raises(KeyError, match="fidelity 'x' is not one of"):
        record.to_graph(GraphSpec(3.0), {"y": 0})


# --- Bad frames: each error names the file and the frame (and, for a parse error, its first line) ---

N_FRAMES, N_ATOMS, BAD = 5, 4, 3  # frame BAD of N_FRAMES is spoilt; its count line is line 19 (1-based)


def _good_frames() -> list:
    rng = np.random.default_rng(1)
    frames = []
    for i in range(N_FRAMES):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.rattle(0.02, seed=i)
        atoms.calc = SinglePointCalculator(
            atoms, energy=-3.5 * N_ATOMS + i, forces=rng.normal(size=(N_ATOMS, 3)), stress=rng.normal(size=6) * 0.01
        )
        frames.append(atoms)
    return frames


def _line(frame: int, atom: int | None = None) -> int:
    """0-based line of a frame's count line (atom None) or of one of its atom lines."""
    return (N_ATOMS + 2) * frame + (0 if atom is None else 2 + atom)


def _spoil_token(lines: list[str], line: int, column: int, value: str | None) -> None:
    """Replace (value None: remove) one whitespace-separated column of a line."""
    tokens = lines[line].split()
    if value is None:
        del tokens[column]
    else:
        tokens[column] = value
    lines[line] = " ".join(tokens)


def _narrow_forces(lines: list[str]) -> None:
    lines[_line(BAD) + 1] = lines[_line(BAD) + 1].replace("forces:R:3", "forces:R:2")
    for atom in range(N_ATOMS):
        _spoil_token(lines, _line(BAD, atom), -1, None)


def _comment(pattern: str, replacement: str):
    def spoil(lines: list[str]) -> None:
        lines[_line(BAD) + 1], count = re.subn(pattern, replacement, lines[_line(BAD) + 1])
        assert count == 1

    return spoil


MALFORMED = {  # case: (how frame BAD is spoilt, keys to read, message)
    "count says 5, 4 atom lines": (
        lambda lines: lines.__setitem__(_line(BAD), "5"),
        None,
        rf"frame {BAD} \(line 19\): .*\(line 25 looks like the next frame's count: fewer atom lines than 5\?\)",
    ),
    "count says 3, 4 atom lines": (
        lambda lines: lines.__setitem__(_line(BAD), "3"),
        None,
        rf"frame {BAD + 1} \(line 24\): expected the atom count, got 'Cu .*\(does frame {BAD} have more atom lines",
    ),
    "count line not a number": (
        lambda lines: lines.__setitem__(_line(BAD), "four"),
        None,
        rf"frame {BAD} \(line 19\): expected the atom count, got 'four'",
    ),
    "non-numeric coordinate": (
        lambda lines: _spoil_token(lines, _line(BAD, 2), 2, "1.2x"),
        None,
        rf"frame {BAD} \(line 19\): could not convert string to float: '1.2x'",
    ),
    "atom line one force short": (
        lambda lines: _spoil_token(lines, _line(BAD, 1), -1, None),
        None,
        rf"frame {BAD} \(line 19\): .*tuple of length 6",
    ),
    "forces of width 2": (_narrow_forces, None, rf"frame {BAD}: forces has shape \(4, 2\), expected \(4, 3\)"),
    "energy not a number": (
        _comment(r"\benergy=\S+", "energy=abc"),
        None,
        rf"frame {BAD}: energy is not numeric: 'abc'",
    ),
    "stress of 7 components": (
        _comment(r'\bstress="[^"]*"', 'stress="1 2 3 4 5 6 7"'),
        None,
        rf"frame {BAD} \(line 19\): .*stress.*9-long",
    ),
    "custom stress of 7 components": (
        _comment(r"\benergy=", 'my_stress="1 2 3 4 5 6 7" energy='),
        {"stress": "my_stress"},
        rf"frame {BAD}: stress has shape \(7,\), expected Voigt \(6,\) or \(3, 3\)",
    ),
    "custom magmoms of 3 atoms": (
        _comment(r"\benergy=", 'my_magmoms="1 2 3" energy='),
        {"magmoms": "my_magmoms"},
        rf"frame {BAD}: magmoms has shape \(3,\), expected \(4,\)",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_frame_names_file_and_frame(tmp_path, case):
    spoil, keys, message = MALFORMED[case]
    path = tmp_path / "train.xyz"
    ase.io.write(path, _good_frames(), format="extxyz")
    lines = path.read_text().splitlines()
    spoil(lines)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(StructureError, match=f"^train.xyz: {message}"):
        read_dataset(path, "pbe", keys)


def test_file_ending_inside_the_last_frame(tmp_path):
    path = tmp_path / "cut.xyz"
    ase.io.write(path, _good_frames(), format="extxyz")
    path.write_text("\n".join(path.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(
        StructureError, match=rf"^cut.xyz: frame {N_FRAMES - 1} \(line 25\): the file ends after 3 of its 4 atom lines"
    ):
        read_dataset(path, "pbe")
    assert len(read_dataset(path, "pbe", index=slice(None, N_FRAMES - 1))) == N_FRAMES - 1  # a limit stops before it


NON_FINITE = {  # target: (spoil the results of frame BAD, message)
    "energy": (lambda r: r.update(energy=np.inf), r"energy has non-finite values \(NaN or inf\)$"),
    "forces": (
        lambda r: r["forces"].__setitem__((2, 1), np.nan),
        r"forces has non-finite values \(NaN or inf\) at atom 2$",
    ),
    "stress": (lambda r: r["stress"].__setitem__(4, np.nan), r"stress has non-finite values"),
    "magmoms": (
        lambda r: r.update(magmoms=np.array([1.0, -np.inf, 0.0, 1.0])),
        r"magmoms has non-finite values .* at atom 1$",
    ),
}


@pytest.mark.parametrize("suffix", [".xyz", ".traj"])
@pytest.mark.parametrize("target", list(NON_FINITE))
def test_non_finite_label_names_file_frame_and_target(tmp_path, target, suffix):
    """NaN / inf is an error, not an absent label (that is a missing key): it would poison training."""
    spoil, message = NON_FINITE[target]
    frames = _good_frames()
    spoil(frames[BAD].calc.results)
    path = tmp_path / f"train{suffix}"
    ase.io.write(path, frames)
    with pytest.raises(StructureError, match=rf"^train{re.escape(suffix)}: frame {BAD}: {message}"):
        read_dataset(path, "pbe")


def test_non_finite_label_in_a_db_names_the_row(tmp_path):
    path = tmp_path / "data.db"
    with ase.db.connect(path) as db:
        for i, atoms in enumerate(_good_frames()[:3]):
            db.write(atoms, data={"scan_forces": np.full((N_ATOMS, 3), np.nan if i == 1 else 0.0)})
    with pytest.raises(
        StructureError, match=r"^data.db: row id=2: forces has non-finite values \(NaN or inf\) at atom 0$"
    ):
        read_dataset(path, "scan", {"forces": "scan_forces"})


# --- Partial labels: masked per frame, and logged with their counts ---


def test_partially_labelled_file_is_masked_per_frame_and_logged(tmp_path, caplog):
    frames = _good_frames()
    for i in (1, 3):
        del frames[i].calc.results["forces"]
    del frames[2].calc.results["stress"]
    path = tmp_path / "part.xyz"
    ase.io.write(path, frames, format="extxyz")

    with caplog.at_level(logging.WARNING, logger="mfwrap.data.readers"):
        records = read_dataset(path, "high")
    assert [r.getMessage() for r in caplog.records] == [
        "part.xyz (fidelity 'high'): forces absent in 2 of 5 frames (masked)",
        "part.xyz (fidelity 'high'): stress absent in 1 of 5 frames (masked)",
    ]  # nothing for energy (in every frame) nor magmoms (in none)
    batch = Batch.from_data_list(to_graphs(records, GraphSpec(3.0), ["high"], dtype=torch.float64))
    expected_forces_mask = np.repeat([True, False, True, False, True], N_ATOMS)
    np.testing.assert_array_equal(batch[K.mask_key(K.FORCES)].numpy(), expected_forces_mask)
    np.testing.assert_array_equal(batch[K.mask_key(K.STRESS)].numpy(), [True, True, False, True, True])
    np.testing.assert_array_equal(batch[K.mask_key(K.ENERGY)].numpy(), [True] * N_FRAMES)
    np.testing.assert_array_equal(batch[K.mask_key(K.MAGMOMS)].numpy(), [False] * N_FRAMES * N_ATOMS)
    assert not batch[K.FORCES][~torch.from_numpy(expected_forces_mask)].any()  # stored as zeros that do not count
    np.testing.assert_allclose(batch[K.FORCES][:N_ATOMS].numpy(), frames[0].calc.results["forces"])

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mfwrap.data.readers"):
        read_dataset(path, "high", index=slice(None, 2))
    assert [r.getMessage() for r in caplog.records] == [
        "part.xyz (fidelity 'high'): forces absent in 1 of 2 frames (masked)"
    ]


def test_frames_unlabelled_at_a_fidelity_are_skipped_and_logged(tmp_path, caplog):
    frames = _good_frames()
    for i in (0, 4):
        frames[i].info["scan_energy"] = -4.0 * N_ATOMS
    path = tmp_path / "two.xyz"
    ase.io.write(path, frames, format="extxyz")
    with caplog.at_level(logging.WARNING, logger="mfwrap.data.readers"):
        records = read_fidelities(
            path, {"pbe": {"energy": "energy", "forces": "forces"}, "scan": {"energy": "scan_energy"}}
        )
    assert [(r.name, r.fidelity) for r in records if r.fidelity == "scan"] == [
        ("two.xyz: frame 0", "scan"),
        ("two.xyz: frame 4", "scan"),
    ]
    assert len(records) == N_FRAMES + 2
    assert [r.getMessage() for r in caplog.records] == [
        "two.xyz (fidelity 'scan'): no label in 3 of 5 frames (skipped; looked for energy under 'scan_energy')"
    ]


def test_a_missing_key_or_label_names_the_keys_looked_for_and_those_the_frames_have(tmp_path):
    """A typo in a key, or a file without any label at a fidelity, is an error that says what was
    looked for and what the file holds (info, arrays, calculator results), not 0 frames."""
    frames = _good_frames()
    for atoms in frames:
        atoms.info["pbe_energy"] = atoms.calc.results.pop("energy")
    path = tmp_path / "keys.xyz"
    ase.io.write(path, frames, format="extxyz")
    held = r"the frames have info \['pbe_energy'\]; calculator results \['forces', 'stress'\]"
    with pytest.raises(LabelKeyError, match=rf"keys.xyz: no frame has energy of 'pbe' under 'pbe_enrgy'; {held}"):
        read_dataset(path, "pbe", {"energy": "pbe_enrgy", "forces": "forces"})
    with pytest.raises(
        LabelKeyError,
        match=rf"keys.xyz: no frame with a label at fidelity 'scan': looked for energy under 'scan_energy', "
        rf"forces under 'scan_forces'; {held}; name the keys",
    ):
        scan = {"energy": "scan_energy", "forces": "scan_forces"}
        read_fidelities(path, {"pbe": {"energy": "pbe_energy"}, "scan": scan}, strict=False)
    # strict for some targets only: the standard names are a wish list, a named key must be there
    records = read_dataset(path, "pbe", {"energy": "pbe_energy", "magmoms": "magmoms"}, strict=["energy"])
    assert len(records) == N_FRAMES and set(records[0].labels) == {"energy"}
    with pytest.raises(LabelKeyError, match="energy of 'pbe' under 'energy'"):
        read_dataset(path, "pbe", {"energy": "energy", "forces": "forces"}, strict=["energy"])


@pytest.mark.parametrize(
    "content, message",
    [
        ("", r"empty.xyz: the file is empty; it holds no structures"),
        ("\n\n", r"empty.xyz: no structures in the file"),
    ],
)
def test_an_empty_file_is_an_error_naming_it(tmp_path, content, message):
    (tmp_path / "empty.xyz").write_text(content)
    with pytest.raises(StructureError, match=message):
        read_structures(tmp_path / "empty.xyz")


def test_a_file_of_no_known_format_or_a_directory_is_an_error_naming_it(tmp_path):
    for name in ("notes.txt", "blob.bin"):
        (tmp_path / name).write_text("hello\n")
        with pytest.raises(StructureError, match=rf"{name}: ase.io cannot tell the format of this file; give"):
            read_dataset(tmp_path / name, "pbe")
    with pytest.raises(ValueError, match="is a directory, not a structure file"):
        read_structures(tmp_path)
    with pytest.raises(FileNotFoundError, match="nothing.xyz: no such file"):
        read_structures(tmp_path / "nothing.xyz")
    (tmp_path / "punch.dat").write_text("hello\n")  # a format ase guesses from the suffix, but no structure
    with pytest.raises(StructureError, match=r"punch.dat: frame 0: ase.io cannot read it as 'gamess-us-punch'"):
        read_structures(tmp_path / "punch.dat")
