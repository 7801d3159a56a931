"""Periodic neighbour list: vectorised, O(N), any cell shape, any pbc.

Algorithm (periodic "ghost" images, then all pairs or a cell list):
1. Wrap positions into the cell along periodic directions (``r = r_w + k @ L``, k integer).
2. Along a periodic direction with reciprocal vector b_k (a column of L^-1), images up to
   ``n_k = ceil(cutoff * |b_k|)`` cells away can hold a neighbour (``1/|b_k|`` is the spacing of
   lattice planes), so thin and tiny cells get as many images as they need.
3. Keep ghost images whose fractional coordinate lies within ``cutoff * |b_k|`` of [0, 1): any
   atom within ``cutoff`` of a point in the cell does. Ghosts are ordered by (atom j, shift S),
   shifts lexicographically.
4. Small systems (``n_atoms * n_ghosts <= BRUTE_FORCE_PAIRS``): all centre–ghost distances at
   once, fewest operations. Large systems: bin ghosts in Cartesian cubes of edge ``cutoff``; each
   centre looks at its 27 surrounding bins, bins kept sparse (sorted ids + searchsorted), so the
   work is O(N) and a dilute molecule costs nothing.

Steps 1–3 are O(n · images) index bookkeeping done in numpy on the host (a torch operation
costs microseconds of overhead, which dominates for small structures); step 4 and everything
per edge run in torch on the positions' device. Both paths of step 4 return bitwise the same
edges in the same order, sorted by (i, j, S). Work is in float64 whatever the input dtype.
"""

from __future__ import annotations

import functools
import itertools
from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor

BRUTE_FORCE_PAIRS = 1 << 20
"""Largest ``n_atoms * n_ghosts`` handled by the all-pairs path (8 MB per float64 array); about
where the cell list starts to win (a few hundred atoms at a 5 Å cutoff)."""

_NEIGHBOUR_BIN_OFFSETS = torch.tensor(list(itertools.product((-1, 0, 1), repeat=3)))


class NeighbourList(NamedTuple):
    """Directed edges (i, j, S), sorted by (i, j, S)."""

    edge_index: Tensor  # (2, E) long, row 0 = neighbour j, row 1 = centre i
    shift: Tensor  # (E, 3) integer-valued cell offsets S of the neighbour's image
    distance: Tensor  # (E,) |r_j + S @ cell - r_i|, Å
    reverse: Tensor  # (E,) long, index of the edge (j, i, -S)


def completed_basis(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """Return a non-singular basis equal to ``cell`` on periodic rows.

    Non-periodic rows (possibly zero, as for a molecule or a slab without a vacuum vector) are
    replaced by an orthonormal basis of the complement of the periodic rows. They never shift or
    wrap anything, so any completion gives the same neighbour list.
    """
    basis = np.array(cell, dtype=np.float64).reshape(3, 3)
    n_periodic = int(pbc.sum())
    if n_periodic == 3:
        return basis
    if n_periodic == 0:
        return np.eye(3)
    _, _, vt = np.linalg.svd(basis[pbc])  # rows n_periodic: of vt span the complement
    basis[~pbc] = vt[n_periodic:]
    return basis


@functools.lru_cache(maxsize=64)
def _image_shifts(n_images: tuple[int, int, int]) -> np.ndarray:
    """(S, 3) float64 integer shifts with ``|S_k| <= n_k``, lexicographic, so S = 0 is the middle
    one and ``-shifts[s] == shifts[S - 1 - s]`` (cached: read only)."""
    axes = [np.arange(-m, m + 1, dtype=np.float64) for m in n_images]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


def _squared_distance(r_j: Sequence[Tensor], r_i: Sequence[Tensor], offset: Sequence[Tensor]) -> Tensor:
    """``Σ_k ((r_j,k - r_i,k) + o_k)^2`` from per-component tensors (broadcast), in this order.

    The order makes the pair (j, i, -o) round bitwise like (i, j, o), so the neighbour list is
    exactly symmetric even for distances at the cutoff, and both search paths agree bitwise.
    """
    x, y, z = ((a - b).add_(o).square_() for a, b, o in zip(r_j, r_i, offset))
    return x.add_(y).add_(z)


def _pairs_all(pos: Tensor, ghost_atom: Tensor, ghost_offset: Tensor, self_ghost: Tensor, cutoff: float):
    """(centre, ghost, squared distance) of every centre–ghost pair closer than ``cutoff``.

    Ghost g is atom ``ghost_atom[g]`` displaced by ``ghost_offset[g]`` (Cartesian);
    ``self_ghost[i]`` is the ghost that is atom i itself (excluded). Sorted by (centre, ghost).
    """
    pos_t, offset_t = pos.T.contiguous(), ghost_offset.T.contiguous()
    d2 = _squared_distance(pos_t[:, ghost_atom].unsqueeze(1), pos_t.unsqueeze(2), offset_t.unsqueeze(1))
    close = d2 < cutoff * cutoff  # (n, G)
    close[torch.arange(len(self_ghost), device=close.device), self_ghost] = False
    centre, ghost = close.nonzero(as_tuple=True)
    return centre, ghost, d2[centre, ghost]


def _pairs_cell_list(pos: Tensor, ghost_atom: Tensor, ghost_offset: Tensor, self_ghost: Tensor, cutoff: float):
    """Same as :func:`_pairs_all`, O(N) with sparse cubic bins (edge slightly above ``cutoff``)."""
    device = pos.device
    n_centres, n_ghosts = pos.shape[0], ghost_atom.shape[0]
    ghost_pos = pos[ghost_atom] + ghost_offset
    bin_size = cutoff * (1 + 1e-8)  # no pair closer than cutoff is ever two bins apart
    origin = ghost_pos.min(dim=0).values
    ghost_bin = torch.floor((ghost_pos - origin) / bin_size).long() + 1
    n_bins = ghost_bin.max(dim=0).values + 2  # +margin so offsets of -1/+1 never alias
    strides = torch.stack([n_bins[1] * n_bins[2], n_bins[2], torch.ones_like(n_bins[2])])
    ghost_bin_id, order = torch.sort((ghost_bin * strides).sum(-1))
    bin_ids, bin_counts = torch.unique_consecutive(ghost_bin_id, return_counts=True)
    bin_starts = torch.cumsum(bin_counts, 0) - bin_counts

    centre_bin = torch.floor((pos - origin) / bin_size).long() + 1
    probe_id = ((centre_bin.unsqueeze(1) + _NEIGHBOUR_BIN_OFFSETS.to(device)) * strides).sum(-1).reshape(-1)
    slot = torch.searchsorted(bin_ids, probe_id).clamp(max=bin_ids.numel() - 1)
    counts = torch.where(bin_ids[slot] == probe_id, bin_counts[slot], torch.zeros_like(slot))
    centre = torch.arange(n_centres, device=device).repeat_interleave(27).repeat_interleave(counts)
    first_of_probe = torch.cumsum(counts, 0) - counts
    within = torch.arange(centre.numel(), device=device) - first_of_probe.repeat_interleave(counts)
    ghost = order[bin_starts[slot].repeat_interleave(counts) + within]

    d2 = _squared_distance(pos[ghost_atom[ghost]].T, pos[centre].T, ghost_offset[ghost].T)
    keep = ((d2 < cutoff * cutoff) & (ghost != self_ghost[centre])).nonzero().squeeze(1)
    keep = keep[torch.argsort(centre[keep] * n_ghosts + ghost[keep])]
    return centre[keep], ghost[keep], d2[keep]


def periodic_radius_graph(positions: Tensor, cell: Tensor, pbc: Tensor, cutoff: float) -> NeighbourList:
    """All directed pairs (i, j, S) with ``|r_j + S @ cell - r_i| < cutoff``, excluding i == j at S = 0.

    Args:
        positions: (n, 3) Cartesian positions, Å.
        cell: (3, 3) lattice vectors as rows, Å (rows of non-periodic directions may be zero).
        pbc: (3,) bool periodicity.
        cutoff: radius, Å.

    Returns:
        a :class:`NeighbourList`; shifts and distances in ``positions.dtype``, on its device.
    """
    device, out_dtype = positions.device, positions.dtype
    pos = positions.detach().cpu().numpy().astype(np.float64, copy=False)
    n_atoms = len(pos)
    pbc_np = pbc.detach().cpu().numpy().reshape(3).astype(bool)
    basis = completed_basis(cell.detach().cpu().numpy(), pbc_np)
    inverse = np.linalg.inv(basis)
    # Cutoff in fractional units per direction, padded so rounding never drops a boundary ghost.
    reach = cutoff * np.linalg.norm(inverse, axis=0) * (1 + 1e-9) + 1e-9
    image = _image_shifts(tuple(np.where(pbc_np, np.ceil(reach), 0).astype(int).tolist()))
    n_shifts = len(image)

    frac = pos @ inverse
    wrap = np.floor(frac)
    wrap[:, ~pbc_np] = 0.0
    wrapped = bool(wrap.any())  # positions already inside the cell skip the wrapping arithmetic
    if wrapped:
        frac = frac - wrap
        pos = pos - wrap @ basis
    if n_shifts == 1:  # not periodic: the ghosts are the atoms themselves
        ghost_atom = self_ghost = np.arange(n_atoms)
        ghost_shift_id = np.zeros(n_atoms, dtype=np.int64)
    else:
        half_width = np.where(pbc_np, 0.5 + reach, np.inf)
        inside = (np.abs((frac - 0.5)[:, None, :] + image) < half_width).all(axis=-1)  # (n, S)
        ghost_atom, ghost_shift_id = np.nonzero(inside)  # ordered by (j, S)
        # Rank of (i, S = 0) among the ghosts; that image is always inside the window.
        self_ghost = np.cumsum(inside.reshape(-1)).reshape(n_atoms, n_shifts)[:, n_shifts // 2] - 1
    # S @ basis term by term: exactly antisymmetric in S (a matmul need not be).
    image_cart = image[:, :1] * basis[0] + image[:, 1:2] * basis[1] + image[:, 2:] * basis[2]

    def to_device(array: np.ndarray) -> Tensor:
        return torch.from_numpy(array).to(device)

    ghost_atom_t = to_device(ghost_atom)
    find_pairs = _pairs_all if n_atoms * len(ghost_atom) <= BRUTE_FORCE_PAIRS else _pairs_cell_list
    centre, ghost, d2 = find_pairs(
        to_device(pos), ghost_atom_t, to_device(image_cart[ghost_shift_id]), to_device(self_ghost), cutoff
    )
    neighbour, shift_id = ghost_atom_t[ghost], to_device(ghost_shift_id)[ghost]
    # Shift for the unwrapped positions: r_j + S L - r_i with r = r_w + k L.
    shift = to_device(image[ghost_shift_id] - wrap[ghost_atom])[ghost]
    if wrapped:
        shift += to_device(wrap)[centre]
    # Edges are sorted by key (i n + j) S + s; the reverse of (i, j, s) is (j, i, S - 1 - s).
    reverse = torch.argsort((neighbour * n_atoms + centre) * n_shifts + (n_shifts - 1 - shift_id))
    return NeighbourList(torch.stack([neighbour, centre]), shift.to(out_dtype), d2.sqrt().to(out_dtype), reverse)
