"""Test structures for the native CHGNet: different chemistry and cell shapes, rattled.

Lattice vectors are snapped to multiples of 2^-6 Å and fractional coordinates to multiples of
2^-10, so that Cartesian positions and edge vectors are exact in float32 whichever way they are
formed. Official CHGNet builds positions as float32(frac) @ float32(cell), we take float32 of the
Cartesian positions; on arbitrary float64 input these differ by ~1 ulp (1e-6 Å), which alone moves
forces by up to ~1e-4 eV/Å on a rattled 56-atom cell (the official float32 model differs from its
own float64 evaluation by that much). Snapping makes both sides see bit-identical geometry, so
the comparison measures the networks.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from mfwrap.datasets.structures import lifepo4


def _rattled_snapped(structure: Structure, seed: int, sigma: float = 0.05) -> Structure:
    rng = np.random.default_rng(seed)
    cart = structure.cart_coords + rng.normal(0.0, sigma, (len(structure), 3))
    lattice = np.round(structure.lattice.matrix * 64) / 64
    frac = np.round(np.linalg.solve(lattice.T, cart.T).T * 1024) / 1024
    return Structure(Lattice(lattice), structure.species, frac)


def _from_ase(atoms) -> Structure:
    return AseAtomsAdaptor.get_structure(atoms)


def _triclinic_rocksalt() -> Structure:
    """NaCl rock-salt conventional cell (8 atoms) on a triclinic lattice (all angles ≠ 90°)."""
    rocksalt = _from_ase(bulk("NaCl", "rocksalt", a=5.64, cubic=True))
    lattice = Lattice.from_parameters(5.5, 5.8, 6.1, 84.0, 95.0, 99.0)
    return Structure(lattice, rocksalt.species, rocksalt.frac_coords)


STRUCTURES = {
    "LiFePO4_1x1x2": lambda: lifepo4((1, 1, 2)),
    "Si_primitive": lambda: _from_ase(bulk("Si", "diamond", a=5.43)),  # 2 atoms, edges 3.84 Å < 6 Å
    "NaCl_triclinic": _triclinic_rocksalt,
    "Fe_bcc_2x2x2": lambda: _from_ase(bulk("Fe", "bcc", a=2.87, cubic=True).repeat((2, 2, 2))),
    "ZnO_wurtzite_2x2x1": lambda: _from_ase(bulk("ZnO", "wurtzite", a=3.25, c=5.21).repeat((2, 2, 1))),
    "SrTiO3_cubic": lambda: Structure(  # 5 atoms, 3.9 Å cube
        Lattice.cubic(3.905),
        ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    ),
}


@pytest.fixture(scope="session")
def test_structures() -> dict[str, Structure]:
    """Name → rattled, snapped pymatgen Structure."""
    return {name: _rattled_snapped(build(), seed) for seed, (name, build) in enumerate(STRUCTURES.items())}


@pytest.fixture(scope="session")
def angle_free_structure() -> Structure:
    """Simple-cubic Po 2×1×1 (a = 3.35 Å): every bond is longer than the 3 Å bond-graph cutoff."""
    return _rattled_snapped(Structure(Lattice.cubic(3.35), ["Po"], [[0, 0, 0]]) * (2, 1, 1), seed=7, sigma=0.03)
