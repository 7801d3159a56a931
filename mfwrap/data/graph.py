"""The graph-data type: structures (ase / pymatgen) to PyG ``Data``, with validation.

A backbone states the graph it needs with a :class:`GraphSpec` (``backbone.graph_spec``);
:func:`to_graph` builds exactly that, once per structure, so training never rebuilds graphs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from ase import Atoms
from torch import Tensor
from torch_geometric.data import Data

from mfwrap.data import keys as K
from mfwrap.data.line_graph import angle_edge_pairs, undirected_from_reverse
from mfwrap.data.neighbors import neighbour_arrays

MAX_ATOMIC_NUMBER = 94
EV_PER_A3_TO_GPA = 160.21766208
MIN_DISTANCE = 1e-4
"""Å; two atoms (or an atom and a periodic image) closer than this are rejected as coincident."""


class StructureError(ValueError):
    """A structure (or its labels) that cannot be turned into a graph; the message names it."""


@dataclass(frozen=True)
class GraphSpec:
    """What graph a backbone reads.

    Attributes:
        cutoff: atom-graph radius, Å.
        line_graph_cutoff: if set, also build undirected pairing and angle pairs of edges shorter
            than this, Å (CHGNet's bond graph); None for backbones without one.
    """

    cutoff: float
    line_graph_cutoff: float | None = None


class AtomicGraph(Data):
    """PyG ``Data`` whose index tensors are offset correctly when batched."""

    def __inc__(self, key: str, value: Any, *args, **kwargs) -> Any:
        if key in (K.UNDIRECTED_TO_EDGE, K.ANGLE_EDGES):
            return self[K.EDGE_INDEX].shape[1]
        if key == K.EDGE_TO_UNDIRECTED:
            return int(self[K.NUM_UNDIRECTED])
        return super().__inc__(key, value, *args, **kwargs)

    def __cat_dim__(self, key: str, value: Any, *args, **kwargs) -> Any:
        if key == K.ANGLE_EDGES:
            return 1
        return super().__cat_dim__(key, value, *args, **kwargs)


def _as_arrays(structure: Any, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(atomic numbers, positions Å, cell rows Å, pbc) from ase.Atoms or pymatgen Structure/Molecule."""
    if hasattr(structure, "get_atomic_numbers"):  # ase.Atoms
        return (
            np.asarray(structure.get_atomic_numbers()),
            np.asarray(structure.get_positions(), dtype=np.float64),
            np.asarray(structure.cell.array, dtype=np.float64),
            np.asarray(structure.pbc, dtype=bool),
        )
    if hasattr(type(structure), "cart_coords"):  # pymatgen (imported already, as the input is one)
        from pymatgen.core.periodic_table import DummySpecies

        # One pass over the sites' compositions (pymatgen's own is_ordered / species re-walk them).
        compositions = [site.species for site in structure.sites]
        if not all(len(c) == 1 and c.num_atoms == 1 for c in compositions):
            raise StructureError(f"{name}: disordered structure (partial occupancies) cannot be a graph")
        numbers = np.fromiter(  # Z = 0, an unknown element, for a dummy species
            (0 if isinstance(sp, DummySpecies) else sp.Z for c in compositions for sp in c),
            dtype=np.int64,
            count=len(compositions),
        )
        if hasattr(structure, "lattice"):
            lattice = structure.lattice
            return numbers, np.asarray(structure.cart_coords), np.asarray(lattice.matrix), np.asarray(lattice.pbc)
        return numbers, np.asarray(structure.cart_coords), np.zeros((3, 3)), np.zeros(3, dtype=bool)
    raise TypeError(f"expected ase.Atoms or a pymatgen Structure/Molecule, got {type(structure).__name__}")


def validate_geometry(numbers: np.ndarray, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, name: str) -> None:
    """Raise :class:`StructureError` naming ``name`` for input no potential can evaluate."""
    if len(numbers) == 0:
        raise StructureError(f"{name}: empty structure (no atoms)")
    if numbers.min() < 1 or numbers.max() > MAX_ATOMIC_NUMBER:
        bad = int(np.flatnonzero((numbers < 1) | (numbers > MAX_ATOMIC_NUMBER))[0])
        raise StructureError(
            f"{name}: unknown element (atomic number {int(numbers[bad])} at atom {bad}); "
            f"supported are Z = 1..{MAX_ATOMIC_NUMBER}"
        )
    if not np.isfinite(positions).all():
        atom = int(np.flatnonzero(~np.isfinite(positions).all(axis=1))[0])
        raise StructureError(f"{name}: non-finite (NaN or inf) coordinates at atom {atom}")
    if not np.isfinite(cell).all():  # also non-periodic rows: edge vectors multiply them by 0
        raise StructureError(f"{name}: non-finite (NaN or inf) cell {cell.tolist()}")
    if pbc.any():
        periodic = cell[pbc]
        squared_lengths = (periodic * periodic).sum(axis=1)
        # Gram determinant = squared volume (area, length) spanned by the periodic rows: zero
        # relative to their lengths (flat), or below 1e-6 Å^3 (1e-6 Å^2, 1e-6 Å) outright.
        gram = np.linalg.det(periodic @ periodic.T)
        if gram <= 1e-12 * max(float(np.prod(squared_lengths)), 1.0):
            raise StructureError(f"{name}: zero-volume (degenerate) cell {cell.tolist()} with pbc {pbc.tolist()}")


def to_graph(
    structure: Any,
    spec: GraphSpec,
    *,
    fidelity: int = 0,
    labels: Mapping[str, Any] | None = None,
    name: str = "structure",
    dtype: torch.dtype = torch.float32,
    on_isolated_atoms: str = "warn",
) -> AtomicGraph:
    """Turn one structure into an :class:`AtomicGraph`.

    Args:
        structure: ase.Atoms or pymatgen Structure / Molecule.
        spec: the backbone's graph needs (cutoffs).
        fidelity: integer fidelity index of this structure.
        labels: optional {"energy": eV total, "forces": (n,3) eV/Å, "stress": (3,3) GPa,
            "magmoms": (n,) μB}; a missing or None label is stored as zeros with a False mask.
        name: how error messages name the structure.
        dtype: float dtype of positions, cell, shifts and labels.
        on_isolated_atoms: "warn" (default), "error" or "ignore" for atoms with no neighbour
            inside ``spec.cutoff``. Such an atom receives no messages: its energy is its
            embedding's readout alone. Official CHGNet raises by default instead.
    """
    if on_isolated_atoms not in ("warn", "error", "ignore"):
        raise ValueError(f"on_isolated_atoms must be 'warn', 'error' or 'ignore', got {on_isolated_atoms!r}")
    numbers, positions, cell, pbc = _as_arrays(structure, name)
    validate_geometry(numbers, positions, cell, pbc, name)
    # The graph is built in numpy (float64) and becomes tensors once, at the end.
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool)
    edge_index, shift, length, reverse = neighbour_arrays(positions, cell, pbc, spec.cutoff)

    n_atoms = len(numbers)
    if len(length) and length.min() < MIN_DISTANCE:
        e = int(length.argmin())
        i, j = int(edge_index[1, e]), int(edge_index[0, e])
        raise StructureError(
            f"{name}: atoms {i} and {j} (or its periodic image) coincide (distance {float(length[e]):.2g} Å)"
        )
    lonely = np.flatnonzero(np.bincount(edge_index[1], minlength=n_atoms) == 0)
    if lonely.size and on_isolated_atoms != "ignore":
        msg = f"{name}: atom(s) {lonely[:10].tolist()} have no neighbour within the {spec.cutoff} Å cutoff"
        if on_isolated_atoms == "error":
            raise StructureError(msg)
        warnings.warn(msg + "; they receive no messages (embedding-only energy)", stacklevel=2)

    fields = {
        K.POSITIONS: torch.from_numpy(positions).to(dtype),
        K.ATOMIC_NUMBERS: torch.from_numpy(np.asarray(numbers, dtype=np.int64)),
        K.CELL: torch.from_numpy(np.array(cell, dtype=np.float64)).to(dtype).unsqueeze(0),
        K.PBC: torch.from_numpy(pbc.copy()).unsqueeze(0),
        K.EDGE_INDEX: torch.from_numpy(edge_index),
        K.EDGE_SHIFT: torch.from_numpy(shift).to(dtype),
        K.FIDELITY: torch.tensor([fidelity], dtype=torch.long),
        "num_nodes": n_atoms,
    }
    if spec.line_graph_cutoff is not None:
        to_undirected, to_edge = undirected_from_reverse(reverse)
        fields[K.EDGE_TO_UNDIRECTED] = torch.from_numpy(to_undirected)
        fields[K.UNDIRECTED_TO_EDGE] = torch.from_numpy(to_edge)
        fields[K.NUM_UNDIRECTED] = len(to_edge)
        fields[K.ANGLE_EDGES] = torch.from_numpy(angle_edge_pairs(edge_index, length, n_atoms, spec.line_graph_cutoff))
    graph = AtomicGraph(**fields)
    if labels is not None:
        attach_labels(graph, labels, name, dtype)
    return graph


_LABEL_SHAPES = {
    K.ENERGY: lambda n: (1,),
    K.FORCES: lambda n: (n, 3),
    K.STRESS: lambda n: (1, 3, 3),
    K.MAGMOMS: lambda n: (n,),
}
_MASK_SHAPES = {K.ENERGY: lambda n: (1,), K.FORCES: lambda n: (n,), K.STRESS: lambda n: (1,), K.MAGMOMS: lambda n: (n,)}


def attach_labels(graph: Data, labels: Mapping[str, Any], name: str, dtype: torch.dtype = torch.float32) -> None:
    """Store every target with its mask; absent (None / missing) labels get zeros and a False mask."""
    n_atoms = graph.num_nodes
    unknown = set(labels) - set(K.TARGETS)
    if unknown:
        raise StructureError(f"{name}: unknown label(s) {sorted(unknown)}; known are {list(K.TARGETS)}")
    for target in K.TARGETS:
        shape = _LABEL_SHAPES[target](n_atoms)
        value = labels.get(target)
        if value is None:
            graph[target] = torch.zeros(shape, dtype=dtype)
            graph[K.mask_key(target)] = torch.zeros(_MASK_SHAPES[target](n_atoms), dtype=torch.bool)
            continue
        array = np.asarray(value, dtype=np.float64)
        if array.size != int(np.prod(shape)) or (array.ndim > 0 and array.shape[0] != shape[0] and target != K.STRESS):
            expected = {
                K.ENERGY: "a scalar",
                K.FORCES: f"({n_atoms}, 3)",
                K.STRESS: "(3, 3)",
                K.MAGMOMS: f"({n_atoms},)",
            }
            raise StructureError(
                f"{name}: label '{target}' has shape {array.shape}, expected {expected[target]} for {n_atoms} atoms"
            )
        if not np.isfinite(array).all():
            raise StructureError(f"{name}: label '{target}' has non-finite values")
        graph[target] = torch.tensor(array.reshape(shape), dtype=dtype)
        graph[K.mask_key(target)] = torch.ones(_MASK_SHAPES[target](n_atoms), dtype=torch.bool)


def structures_to_graphs(structures: Any | Sequence[Any], spec: GraphSpec, **kwargs) -> list[AtomicGraph]:
    """Convert one structure or a list; error messages name structures by their list index."""
    if not isinstance(structures, (list, tuple)):
        structures = [structures]
    return [to_graph(s, spec, name=f"structure {i}", **kwargs) for i, s in enumerate(structures)]


def structure_index(data: Data) -> Tensor:
    """(n,) index of the structure each atom belongs to (zeros for a single un-batched graph)."""
    index = getattr(data, "batch", None)
    return index if index is not None else torch.zeros_like(data[K.ATOMIC_NUMBERS])


def edge_vectors(data: Data) -> Tensor:
    """(E, 3) vectors from centre to neighbour image, ``r_j + S @ cell_b - r_i``, Å.

    Differentiable in ``data.pos`` and ``data.cell`` (so a strained cell gives stress).
    """
    return edge_vectors_of(
        data[K.POSITIONS], data[K.CELL], data[K.EDGE_SHIFT], data[K.EDGE_INDEX], structure_index(data)
    )


def edge_vectors_of(pos: Tensor, cell: Tensor, edge_shift: Tensor, edge_index: Tensor, structure: Tensor) -> Tensor:
    """:func:`edge_vectors` on plain tensors (traceable by ``torch.compile``): pos (n, 3) Å,
    cell (B, 3, 3) Å, edge_shift (E, 3), edge_index (2, E), structure (n,) → (E, 3) Å."""
    neighbour, centre = edge_index
    # index_select, not x[index]: its backward adds rows (index_add_) where x[index]'s sorts the
    # duplicate indices, one per edge of a cell (costly on a GPU for large cells)
    edge_cell = torch.index_select(cell, 0, structure[centre])  # (E, 3, 3)
    offset = torch.bmm(edge_shift.unsqueeze(1), edge_cell).squeeze(1)
    return torch.index_select(pos, 0, neighbour) + offset - torch.index_select(pos, 0, centre)


def graph_atoms(graph: Data) -> Atoms:
    """The bare structure of a graph (species, positions Å, cell Å, periodicity; no labels) as ``ase.Atoms``."""
    return Atoms(
        numbers=graph[K.ATOMIC_NUMBERS].cpu().numpy(),
        positions=graph[K.POSITIONS].detach().double().cpu().numpy(),
        cell=graph[K.CELL].detach().double().cpu().numpy().reshape(3, 3),
        pbc=graph[K.PBC].cpu().numpy().reshape(3),
    )
