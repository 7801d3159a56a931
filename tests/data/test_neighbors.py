"""neighbour_arrays equals ase's neighbour list as a set of (i, j, S) with distances."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.neighborlist import neighbor_list
from hypothesis import given, settings
from hypothesis import strategies as st

from mfwrap.data import neighbors
from mfwrap.data.neighbors import neighbour_arrays

from .strategies import random_atoms

BOUNDARY = 1e-8  # pairs this close to the cutoff may fall on either side from rounding alone


def _ours(atoms: Atoms, cutoff: float):
    return neighbour_arrays(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)


def _as_dict(centre, neighbour, shift, dist, cutoff):
    return {
        (int(i), int(j), tuple(int(round(x)) for x in s)): float(d)
        for i, j, s, d in zip(centre, neighbour, shift, dist)
        if abs(d - cutoff) > BOUNDARY
    }


def assert_same_as_ase(atoms: Atoms, cutoff: float) -> None:
    i, j, S, d = neighbor_list("ijSd", atoms, cutoff, self_interaction=False)
    expected = _as_dict(i, j, S, d, cutoff)
    edge_index, shift, dist, reverse = _ours(atoms, cutoff)
    got = _as_dict(edge_index[1], edge_index[0], shift, dist, cutoff)
    assert got.keys() == expected.keys()
    keys = list(expected)
    np.testing.assert_allclose([got[k] for k in keys], [expected[k] for k in keys], rtol=0, atol=1e-9)
    # distances agree with the geometry we return
    vec = atoms.positions[edge_index[0]] + shift @ atoms.cell.array - atoms.positions[edge_index[1]]
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), dist, atol=1e-9)
    # sorted by (centre, neighbour, shift) and every pair (i, j, S) has its reverse (j, i, -S)
    order = np.lexsort((shift[:, 2], shift[:, 1], shift[:, 0], edge_index[0], edge_index[1]))
    assert (order == np.arange(len(order))).all()
    np.testing.assert_array_equal(edge_index[:, reverse], edge_index[::-1])
    np.testing.assert_array_equal(shift[reverse], -shift)


@settings(max_examples=150, deadline=None)
@given(atoms=random_atoms(max_atoms=8), cutoff=st.floats(1.0, 6.0))
def test_random_cells_equal_ase(atoms, cutoff):
    assert_same_as_ase(atoms, cutoff)


@settings(max_examples=15, deadline=None)
@given(
    atoms=random_atoms(max_atoms=3, pbc=(True, True, True), min_length=0.5, max_length=2.5), cutoff=st.floats(3.0, 6.0)
)
def test_cells_much_smaller_than_cutoff(atoms, cutoff):
    assert min(atoms.cell.lengths()) < cutoff
    assert_same_as_ase(atoms, cutoff)


@settings(max_examples=30, deadline=None)
@given(atoms=random_atoms(max_atoms=10), cutoff=st.floats(1.0, 6.0))
def test_cell_list_path_identical_to_all_pairs_path(atoms, cutoff):
    all_pairs = _ours(atoms, cutoff)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(neighbors, "BRUTE_FORCE_PAIRS", -1)
        cell_list = _ours(atoms, cutoff)
    for a, b in zip(all_pairs, cell_list):
        np.testing.assert_array_equal(a, b)


def test_molecule_without_cell():
    atoms = molecule("CH3CH2OH")
    assert not atoms.pbc.any() and np.allclose(atoms.cell.array, 0)
    assert_same_as_ase(atoms, 1.6)
    edge_index, shift, _, _ = _ours(atoms, 1.6)
    assert edge_index.shape[1] > 0 and not shift.any()


def test_slab_with_zero_vacuum_row():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 1))
    atoms.cell[2] = 0.0
    atoms.pbc = (True, True, False)
    assert_same_as_ase(atoms, 4.0)


def test_large_system_uses_cell_list_and_equals_ase():
    rng = np.random.default_rng(0)
    cell = np.array([[28.0, 0.0, 0.0], [3.0, 27.0, 0.0], [-2.0, 4.0, 26.0]])
    atoms = Atoms("Si2000", scaled_positions=rng.uniform(size=(2000, 3)), cell=cell, pbc=True)
    assert 2000 * 2000 > neighbors.BRUTE_FORCE_PAIRS
    assert_same_as_ase(atoms, 5.0)
