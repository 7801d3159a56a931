"""Structures from the AFLOW prototype library (disjoint replay/test parts, decorated, never too close)
and the other-chemistries evaluation set labelled by both LMFP teachers."""

from __future__ import annotations

import numpy as np
import pytest
from ase.units import GPa

from mfwrap.datasets import other_chemistries, prototypes, teachers
from mfwrap.datasets.prototypes import (
    MIN_BOND_RATIO,
    equilibrate_volume,
    library,
    min_bond_ratio,
    part_of,
    prototype_structures,
)


def test_the_parts_split_the_library_by_label_whatever_the_seed():
    parts = {part: {p.label for p in library() if p.part == part} for part in prototypes.PARTS}
    assert not parts["replay"] & parts["test"]
    assert parts["replay"] | parts["test"] == {p.label for p in library()}
    assert min(len(labels) for labels in parts.values()) > 100  # both halves are diverse
    for seed in (0, 1):
        for part, labels in parts.items():
            made = prototype_structures(30, seed=seed, part=part)
            assert {a.info["prototype"] for a in made} <= labels and {a.info["part"] for a in made} == {part}


def test_structures_are_deterministic_and_seeded():
    first, again, other = (prototype_structures(8, seed=s, part="replay") for s in (3, 3, 4))
    assert all(
        np.array_equal(a.positions, b.positions) and np.array_equal(a.numbers, b.numbers)
        for a, b in zip(first, again, strict=True)
    )
    assert not all(a.get_chemical_formula() == b.get_chemical_formula() for a, b in zip(first, other, strict=True))


def test_decorations_use_the_given_elements_and_keep_atoms_apart():
    elements = (11, 12, 17, 8, 29, 14)
    made = prototype_structures(60, elements=elements, seed=0, part="test", max_atoms=12, rattle=0.3)
    assert len({a.info["prototype"] for a in made}) >= 50  # each prototype once before any twice: diverse
    for atoms in made:
        assert len(atoms) <= 12 and set(atoms.numbers) <= set(elements) and atoms.pbc.all()
        assert min_bond_ratio(atoms) >= MIN_BOND_RATIO - 1e-9
    classes = {p.label: p.classes for p in library()}
    for atoms in made[:10]:  # one element per species class of the prototype, distinct between classes
        site_classes = classes[atoms.info["prototype"]]
        pairs = set(zip(site_classes.tolist(), atoms.numbers.tolist()))
        assert len(pairs) == len(set(site_classes.tolist())) == len(set(atoms.numbers.tolist()))


def test_volume_equilibration_reaches_zero_pressure_and_leaves_the_draws_alone():
    made = prototype_structures(6, seed=2, part="replay", rattle=0.0, strain=0.0)
    volumes = np.array([a.get_volume() for a in made])
    targets = volumes * np.exp(np.linspace(-0.4, 0.4, 6))  # equilibrium volumes V0; B = 120 GPa
    moduli = np.array([120.0] * 6)

    def pressure(structures):  # P = B ln(V0 / V), GPa
        return moduli * np.log(targets / np.array([a.get_volume() for a in structures]))

    equilibrate_volume(made, pressure)
    np.testing.assert_allclose([a.get_volume() for a in made], targets, rtol=1e-6)

    plain = prototype_structures(6, seed=2, part="replay")
    relaxed = prototype_structures(6, seed=2, part="replay", pressure=lambda s: np.full(len(s), 10.0))
    for a, b in zip(plain, relaxed, strict=True):
        assert a.info["prototype"] == b.info["prototype"] and np.array_equal(a.numbers, b.numbers)
        assert b.get_volume() > a.get_volume()  # compressed (P > 0): expanded


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="part must be one of"):
        prototype_structures(1, part="train")
    with pytest.raises(ValueError, match="non-empty list of atomic numbers"):
        prototype_structures(1, elements=())


def test_other_chemistries_both_teachers_on_the_same_structures(tmp_path, monkeypatch):
    data = other_chemistries.load_other_chemistries(3, seed=0, cache_dir=tmp_path)
    high, low = data["high"], data["low"]
    assert [r.fidelity for r in high] == ["high"] * 3 and [r.fidelity for r in low] == ["low"] * 3
    for h, lo in zip(high, low, strict=True):
        assert (h.atoms.numbers == lo.atoms.numbers).all() and np.array_equal(h.atoms.positions, lo.atoms.positions)
        assert not set(h.atoms.numbers) & set(other_chemistries.LMFP_ELEMENTS)
        assert part_of(h.atoms.info["prototype"]) == "test"
        assert set(h.labels) == {"energy", "forces", "stress", "magmoms"} and "magmoms" not in lo.labels
    assert high[0].labels["energy"] != low[0].labels["energy"]

    atoms = high[0].atoms
    (expected,) = teachers.load_teacher("r2scan")([atoms], "efsm")
    np.testing.assert_allclose(high[0].labels["energy"], expected["e"] * len(atoms), rtol=1e-6)
    np.testing.assert_allclose(high[0].labels["forces"], expected["f"], atol=1e-4)  # float32; positions as stored
    stress = 0.5 * (expected["s"] + expected["s"].T) * GPa  # as stored (eV/Å^3), read back in GPa
    np.testing.assert_allclose(high[0].labels["stress"], stress / GPa, atol=1e-4)

    monkeypatch.setattr(other_chemistries, "load_teacher", None)  # a second load only reads the cache
    cached = other_chemistries.load_other_chemistries(3, seed=0, cache_dir=tmp_path)
    assert np.array_equal(cached["low"][2].labels["forces"], low[2].labels["forces"])
