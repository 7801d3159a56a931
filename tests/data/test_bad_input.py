"""Bad input: each a clear StructureError naming the structure and the problem (or, for an atom
without neighbours, a warning and a defined graph where official CHGNet raises)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from pymatgen.core import Lattice, Structure

from mfwrap.data import GraphSpec, StructureError, structures_to_graphs, to_graph
from mfwrap.data import keys as K

SPEC = GraphSpec(5.0, 3.0)


def _nacl() -> Atoms:
    return bulk("NaCl", "rocksalt", a=5.64)


def _with(atoms: Atoms, **changes) -> Atoms:
    atoms = atoms.copy()
    for key, value in changes.items():
        setattr(atoms, key, value)
    return atoms


BAD = {
    "unknown element X": (
        Atoms("X", positions=[[0, 0, 0]], cell=[4, 4, 4], pbc=True),
        r"unknown element \(atomic number 0 at atom 0\)",
    ),
    "Z > 94": (
        Atoms(numbers=[11, 95], positions=[[0, 0, 0], [2, 0, 0]], cell=[5, 5, 5], pbc=True),
        r"atomic number 95 at atom 1.*1\.\.94",
    ),
    "NaN coordinate": (
        _with(_nacl(), positions=[[0, 0, 0], [np.nan, 0, 0]]),
        r"non-finite \(NaN or inf\) coordinates at atom 1",
    ),
    "inf coordinate": (_with(_nacl(), positions=[[np.inf, 0, 0], [1, 0, 0]]), "non-finite .* at atom 0"),
    "empty": (Atoms(cell=[3, 3, 3], pbc=True), "empty structure"),
    "zero cell with pbc": (Atoms("Cu2", positions=[[0, 0, 0], [2, 0, 0]], pbc=True), "zero-volume"),
    "flat cell": (
        Atoms("Cu2", positions=[[0, 0, 0], [2, 0, 0]], cell=[[3, 0, 0], [0, 3, 0], [3, 3, 0]], pbc=True),
        "zero-volume",
    ),
    "parallel periodic rows of a slab": (
        Atoms("Cu", positions=[[0, 0, 0]], cell=[[3, 0, 0], [6, 0, 0], [0, 0, 0]], pbc=[True, True, False]),
        "zero-volume",
    ),
    "NaN cell": (_with(_nacl(), cell=[[np.nan, 0, 0], [0, 5, 0], [0, 0, 5]]), "non-finite .*cell"),
    "coincident atoms": (
        Atoms("Cu2", positions=[[1, 1, 1], [1, 1, 1]], cell=[4, 4, 4], pbc=True),
        "atoms 0 and 1 .*coincide",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_structure_is_a_named_error(case):
    atoms, message = BAD[case]
    with pytest.raises(StructureError, match=f"^frame 7: .*{message}"):
        to_graph(atoms, SPEC, name="frame 7")


def test_list_errors_name_the_index():
    with pytest.raises(StructureError, match="^structure 1: non-finite"):
        structures_to_graphs([_nacl(), BAD["NaN coordinate"][0]], SPEC)


def test_pymatgen_dummy_species_is_unknown_element():
    structure = Structure(Lattice.cubic(4.0), ["Na", "X0+"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(StructureError, match=r"unknown element \(atomic number 0 at atom 1\)"):
        to_graph(structure, SPEC)


def test_disordered_pymatgen_structure_is_a_named_error():
    structure = Structure(Lattice.cubic(4.0), [{"Na": 0.5, "K": 0.5}, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(StructureError, match="^NaKCl: disordered structure"):
        to_graph(structure, SPEC, name="NaKCl")


def _isolated() -> Atoms:
    """Na2 at 2.5 Å plus a Cl atom 8 Å away from both, in a large periodic box."""
    return Atoms("Na2Cl", positions=[[1, 1, 1], [3.5, 1, 1], [1, 1, 9]], cell=[14, 14, 17], pbc=True)


def test_isolated_atom_warns_and_gives_a_defined_graph():
    """(chgnet's own converter raises on such a structure; mfwrap warns, naming the atom, and goes on.)"""
    with pytest.warns(UserWarning, match=r"^iso: atom\(s\) \[2\] have no neighbour within the 5.0 Å cutoff"):
        graph = to_graph(_isolated(), SPEC, name="iso")
    assert graph.num_nodes == 3 and graph[K.ATOMIC_NUMBERS].tolist() == [11, 11, 17]
    assert graph[K.EDGE_INDEX].tolist() == [[1, 0], [0, 1]]  # the Na pair only; Cl has no edges
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        to_graph(_isolated(), SPEC, on_isolated_atoms="ignore")


def test_isolated_atom_error_mode():
    with pytest.raises(StructureError, match=r"^iso: atom\(s\) \[2\] have no neighbour"):
        to_graph(_isolated(), SPEC, name="iso", on_isolated_atoms="error")
    with pytest.raises(ValueError, match="on_isolated_atoms must be"):
        to_graph(_isolated(), SPEC, on_isolated_atoms="raise")


def test_single_atom_molecule_is_isolated_not_an_error():
    with pytest.warns(UserWarning, match="no neighbour"):
        graph = to_graph(Atoms("Ar", positions=[[0, 0, 0]]), SPEC)
    assert graph[K.EDGE_INDEX].shape == (2, 0) and graph[K.ANGLE_EDGES].shape == (2, 0)
    assert graph[K.UNDIRECTED_TO_EDGE].shape == (0,) and graph[K.NUM_UNDIRECTED] == 0
    assert graph[K.POSITIONS].dtype == torch.float32
