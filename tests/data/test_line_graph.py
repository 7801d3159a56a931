"""Bond graph (undirected pairing, angle pairs) equal to chgnet's CrystalGraphConverter and to a
brute-force enumeration."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from chgnet.graph import CrystalGraphConverter
from hypothesis import given, settings
from hypothesis import strategies as st
from pymatgen.core import Lattice, Structure

from mfwrap.data import GraphSpec, to_graph
from mfwrap.data.line_graph import angle_edge_pairs, undirected_from_reverse
from mfwrap.data.neighbors import neighbour_arrays
from mfwrap.datasets.structures import lifepo4

from .strategies import random_atoms


def _chgnet_test_structures() -> dict[str, Structure]:
    rng = np.random.default_rng(3)
    triclinic = Structure(
        Lattice.from_parameters(5.1, 5.7, 6.3, 77.0, 84.0, 101.0),
        ["Li", "Mn", "O", "O", "P", "O"],
        rng.uniform(size=(6, 3)),
    )
    return {
        "LiFePO4 1x1x2": lifepo4((1, 1, 2)),
        "triclinic": triclinic,
        "Si primitive (cell < cutoff)": Structure(
            Lattice.from_parameters(3.87, 3.87, 3.87, 60, 60, 60), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]]
        ),
        "NaCl rattled": Structure(
            Lattice.cubic(5.64),
            ["Na", "Cl"] * 4,
            np.array(
                [
                    [0, 0, 0],
                    [0.5, 0, 0],
                    [0.5, 0.5, 0],
                    [0, 0.5, 0],
                    [0.5, 0, 0.5],
                    [0, 0, 0.5],
                    [0, 0.5, 0.5],
                    [0.5, 0.5, 0.5],
                ]
            )
            + rng.normal(0, 0.02, (8, 3)),
        ),
    }


def _edge_keys(centre, neighbour, image):
    return list(zip(centre.tolist(), neighbour.tolist(), map(tuple, np.rint(image.numpy()).astype(int).tolist())))


@pytest.mark.parametrize("name", list(_chgnet_test_structures()))
def test_bond_graph_equals_chgnet(name):
    structure = _chgnet_test_structures()[name]
    reference = CrystalGraphConverter(atom_graph_cutoff=5, bond_graph_cutoff=3)(structure)
    graph = to_graph(structure, GraphSpec(5.0, 3.0), dtype=torch.float64)

    ref_edges = _edge_keys(reference.atom_graph[:, 0], reference.atom_graph[:, 1], reference.neighbor_image)
    edges = _edge_keys(graph.edge_index[1], graph.edge_index[0], graph.edge_shift)
    assert sorted(ref_edges) == sorted(edges)

    ref_angles = sorted((ref_edges[a], ref_edges[b]) for a, b in reference.bond_graph[:, [2, 4]].tolist())
    angles = sorted((edges[a], edges[b]) for a, b in graph.angle_edges.t().tolist())
    assert ref_angles == angles and len(angles) > 0

    def undirected_sets(directed_to_undirected, keys):
        groups = {}
        for edge, u in enumerate(directed_to_undirected.tolist()):
            groups.setdefault(u, set()).add(keys[edge])
        return sorted(map(sorted, groups.values()))

    assert undirected_sets(reference.directed2undirected, ref_edges) == undirected_sets(graph.edge_to_undirected, edges)
    assert graph.num_undirected == len(reference.undirected2directed)


def _brute_force_angles(edge_index: np.ndarray, length: np.ndarray, cutoff: float) -> list[tuple[int, int]]:
    short = [e for e in range(edge_index.shape[1]) if length[e] < cutoff]
    return sorted((a, b) for a, b in itertools.permutations(short, 2) if edge_index[1, a] == edge_index[1, b])


@settings(max_examples=60, deadline=None)
@given(atoms=random_atoms(max_atoms=8), cutoff=st.floats(1.5, 4.5), ratio=st.floats(0.3, 1.0))
def test_line_graph_matches_brute_force(atoms, cutoff, ratio):
    edge_index, _, length, reverse = neighbour_arrays(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)
    angles = angle_edge_pairs(edge_index, length, len(atoms), cutoff * ratio)
    assert sorted(map(tuple, angles.T.tolist())) == _brute_force_angles(edge_index, length, cutoff * ratio)
    # grouped by centre, then by first edge
    centres = edge_index[1, angles[0]]
    assert (centres[1:] >= centres[:-1]).all() and (centres == edge_index[1, angles[1]]).all()

    to_undirected, to_edge = undirected_from_reverse(reverse)
    np.testing.assert_array_equal(to_undirected, to_undirected[reverse])  # an edge and its reverse share one
    np.testing.assert_array_equal(to_undirected[to_edge], np.arange(to_edge.size))
    assert (to_edge < reverse[to_edge]).all() and (to_edge[1:] > to_edge[:-1]).all()
    assert 2 * to_edge.size == edge_index.shape[1]


def test_angle_pairs_of_unsorted_edges():
    # edges given in an arbitrary order: grouping must not rely on the neighbour list's order
    edge_index = np.array([[1, 0, 2, 0, 3], [0, 2, 0, 1, 0]])
    length = np.array([1.0, 1.0, 1.0, 1.0, 5.0])
    angles = angle_edge_pairs(edge_index, length, 4, 2.0)
    assert sorted(map(tuple, angles.T.tolist())) == [(0, 2), (2, 0)]
