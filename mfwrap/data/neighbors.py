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

All of it runs on the host in numpy (:func:`neighbour_arrays`), whose per-operation overhead is
several times below torch's and dominates for the small structures graphs are usually built
from; only the O(pairs) distance kernel calls torch on zero-copy views (faster broadcasting).
Both paths of step 4 return bitwise the same edges in the same order, sorted by (i, j, S).
Work is in float64 whatever the input dtype.
"""

from __future__ import annotations

import functools
import itertools
from typing import NamedTuple, Sequence

import numpy as np
import torch

BRUTE_FORCE_PAIRS = 1 << 20
"""Largest ``n_atoms * n_ghosts`` handled by the all-pairs path (8 MB per float64 array); about
where the cell list starts to win (a few hundred atoms at a 5 Å cutoff)."""

_NEIGHBOUR_BIN_OFFSETS = np.array(list(itertools.product((-1, 0, 1), repeat=3)))


class NeighbourList(NamedTuple):
    """Directed edges (i, j, S), sorted by (i, j, S)."""

    edge_index: np.ndarray  # (2, E) int64, row 0 = neighbour j, row 1 = centre i
    shift: np.ndarray  # (E, 3) float64 integer-valued cell offsets S of the neighbour's image
    distance: np.ndarray  # (E,) float64 |r_j + S @ cell - r_i|, Å
    reverse: np.ndarray  # (E,) int64, index of the edge (j, i, -S)


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


def _squared_distance(r_j: Sequence[np.ndarray], r_i: Sequence[np.ndarray], offset: Sequence[np.ndarray]) -> np.ndarray:
    """``Σ_k ((r_j,k - r_i,k) + o_k)^2`` from per-component arrays (broadcast), in this order.

    The order makes the pair (j, i, -o) round bitwise like (i, j, o), so the neighbour list is
    exactly symmetric even for distances at the cutoff, and both search paths agree bitwise.
    Computed by torch on zero-copy views: its broadcasting loops are several times faster than
    numpy's for an (n, 1) - (1, G) operation; the result is IEEE-exact either way.
    """
    total = part = None
    for a, b, o in zip(r_j, r_i, offset):  # two buffers in all, reused
        part = torch.sub(torch.from_numpy(a), torch.from_numpy(b), out=part)
        part.add_(torch.from_numpy(o)).square_()
        if total is None:
            total, part = part, None
        else:
            total.add_(part)
    return total.numpy()


def _pairs_all(
    pos: np.ndarray, ghost_atom: np.ndarray, ghost_offset: np.ndarray, self_ghost: np.ndarray, cutoff: float
):
    """(centre, ghost, squared distance) of every centre–ghost pair closer than ``cutoff``.

    Ghost g is atom ``ghost_atom[g]`` displaced by ``ghost_offset[g]`` (Cartesian);
    ``self_ghost[i]`` is the ghost that is atom i itself (excluded). Sorted by (centre, ghost).
    """
    n_ghosts = len(ghost_atom)
    pos_t, offset_t = np.ascontiguousarray(pos.T), np.ascontiguousarray(ghost_offset.T)  # contiguous rows: fast loops
    d2 = _squared_distance(pos_t.take(ghost_atom, axis=1)[:, None, :], pos_t[:, :, None], offset_t[:, None, :])
    close = (d2 < cutoff * cutoff).reshape(-1)  # (n G,)
    close[np.arange(len(self_ghost)) * n_ghosts + self_ghost] = False
    pair = np.flatnonzero(close)
    centre, ghost = np.divmod(pair, n_ghosts)
    return centre, ghost, d2.reshape(-1)[pair]


def _pairs_cell_list(
    pos: np.ndarray, ghost_atom: np.ndarray, ghost_offset: np.ndarray, self_ghost: np.ndarray, cutoff: float
):
    """Same as :func:`_pairs_all`, O(N) with sparse cubic bins (edge slightly above ``cutoff``)."""
    n_centres, n_ghosts = len(pos), len(ghost_atom)
    pos_t, offset_t = np.ascontiguousarray(pos.T), np.ascontiguousarray(ghost_offset.T)
    ghost_pos = pos.take(ghost_atom, axis=0) + ghost_offset
    bin_size = cutoff * (1 + 1e-8)  # no pair closer than cutoff is ever two bins apart
    origin = ghost_pos.min(axis=0)
    ghost_bin = np.floor((ghost_pos - origin) / bin_size).astype(np.int64) + 1
    n_bins = ghost_bin.max(axis=0) + 2  # +margin so offsets of -1/+1 never alias
    strides = np.array([n_bins[1] * n_bins[2], n_bins[2], 1])
    ghost_bin_id = ghost_bin @ strides
    order = np.argsort(ghost_bin_id, kind="stable")
    ghost_bin_id = ghost_bin_id[order]
    bin_starts = np.flatnonzero(np.diff(ghost_bin_id, prepend=-1))
    bin_ids, bin_counts = ghost_bin_id[bin_starts], np.diff(bin_starts, append=n_ghosts)

    centre_bin = np.floor((pos - origin) / bin_size).astype(np.int64) + 1
    probe_id = ((centre_bin[:, None, :] + _NEIGHBOUR_BIN_OFFSETS) @ strides).reshape(-1)
    slot = np.minimum(np.searchsorted(bin_ids, probe_id), len(bin_ids) - 1)
    counts = np.where(bin_ids[slot] == probe_id, bin_counts[slot], 0)
    centre = np.repeat(np.arange(n_centres).repeat(27), counts)
    first_of_probe = np.cumsum(counts) - counts
    within = np.arange(len(centre)) - np.repeat(first_of_probe, counts)
    ghost = order[np.repeat(bin_starts[slot], counts) + within]

    d2 = _squared_distance(
        pos_t.take(ghost_atom[ghost], axis=1), pos_t.take(centre, axis=1), offset_t.take(ghost, axis=1)
    )
    keep = np.flatnonzero((d2 < cutoff * cutoff) & (ghost != self_ghost[centre]))
    keep = keep[np.argsort(centre[keep] * n_ghosts + ghost[keep])]
    return centre[keep], ghost[keep], d2[keep]


def neighbour_arrays(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float) -> NeighbourList:
    """All directed pairs (i, j, S) with ``|r_j + S @ cell - r_i| < cutoff``, excluding i == j at S = 0.

    Args:
        positions: (n, 3) Cartesian positions, Å (computed in float64).
        cell: (3, 3) lattice vectors as rows, Å (rows of non-periodic directions may be zero).
        pbc: (3,) bool periodicity.
        cutoff: radius, Å.

    Returns:
        a :class:`NeighbourList` of numpy arrays.
    """
    pos = np.asarray(positions, dtype=np.float64)
    n_atoms = len(pos)
    pbc = np.asarray(pbc, dtype=bool).reshape(3)
    basis = completed_basis(cell, pbc)
    inverse = np.linalg.inv(basis)
    # Cutoff in fractional units per direction, padded so rounding never drops a boundary ghost.
    reach = cutoff * np.linalg.norm(inverse, axis=0) * (1 + 1e-9) + 1e-9
    image = _image_shifts(tuple(np.where(pbc, np.ceil(reach), 0).astype(int).tolist()))
    n_shifts = len(image)

    frac = pos @ inverse
    wrap = np.floor(frac)
    wrap[:, ~pbc] = 0.0
    wrapped = bool(wrap.any())  # positions already inside the cell skip the wrapping arithmetic
    if wrapped:
        frac = frac - wrap
        pos = pos - wrap @ basis
    if n_shifts == 1:  # not periodic: the ghosts are the atoms themselves
        ghost_atom = self_ghost = np.arange(n_atoms)
        ghost_shift_id = np.zeros(n_atoms, dtype=np.int64)
    else:
        half_width = np.where(pbc, 0.5 + reach, np.inf)
        inside = np.ones((n_atoms, n_shifts), dtype=bool)  # (n, S); axis by axis: tiny last axes are slow
        for centred, shift_k, width in zip((frac - 0.5).T, image.T, half_width):
            inside &= np.abs(centred[:, None] + shift_k) < width
        ghost_atom, ghost_shift_id = np.nonzero(inside)  # ordered by (j, S)
        # Rank of (i, S = 0) among the ghosts; that image is always inside the window.
        self_ghost = np.cumsum(inside.reshape(-1)).reshape(n_atoms, n_shifts)[:, n_shifts // 2] - 1
    # S @ basis term by term: exactly antisymmetric in S (a matmul need not be).
    image_cart = image[:, :1] * basis[0] + image[:, 1:2] * basis[1] + image[:, 2:] * basis[2]

    find_pairs = _pairs_all if n_atoms * len(ghost_atom) <= BRUTE_FORCE_PAIRS else _pairs_cell_list
    centre, ghost, d2 = find_pairs(pos, ghost_atom, image_cart.take(ghost_shift_id, axis=0), self_ghost, cutoff)
    neighbour, shift_id = ghost_atom[ghost], ghost_shift_id[ghost]
    # Shift for the unwrapped positions: r_j + S L - r_i with r = r_w + k L.
    shift = image.take(shift_id, axis=0)  # (row gathers: take is several times faster than [])
    if wrapped:
        shift -= wrap.take(neighbour, axis=0)
        shift += wrap.take(centre, axis=0)
    # Edges are sorted by key (i n + j) S + s; the reverse of (i, j, s) is (j, i, S - 1 - s).
    # Keys are distinct, so any sort gives this permutation; the stable one (timsort) is several
    # times faster here, as the reverse keys come in runs (one per centre).
    reverse = np.argsort((neighbour * n_atoms + centre) * n_shifts + (n_shifts - 1 - shift_id), kind="stable")
    return NeighbourList(np.stack([neighbour, centre]), shift, np.sqrt(d2), reverse)
