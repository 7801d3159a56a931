"""Undirected pairing of directed edges and angle triplets (a "bond graph"), vectorised.

CHGNet's bond graph: each undirected edge {(i, j, S), (j, i, -S)} is one bond; an angle is an
ordered pair (e1, e2), e1 != e2, of directed edges leaving the same centre atom, both shorter
than the bond-graph cutoff (3 Å in CHGNet). Every centre with c short edges has c (c - 1) angles.

The pairing and the angles are index bookkeeping on the host, done in numpy: for the few thousand
edges of a typical structure, torch's per-operation overhead would cost several times the work.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def undirected_from_reverse(reverse: Tensor | np.ndarray) -> tuple[Tensor, Tensor] | tuple[np.ndarray, np.ndarray]:
    """Number the undirected edges given each directed edge's reverse (an involution without
    fixed points, e.g. :attr:`NeighbourList.reverse`).

    Returns:
        edge_to_undirected (E,) long; undirected_to_edge (U,) long, the lower-indexed directed edge
        of each pair, with undirected ids numbered in the order of those representatives. Tensors
        on ``reverse``'s device for a tensor, numpy arrays for an array (computed in numpy).
    """
    rev = _host(reverse)
    is_representative = np.arange(len(rev)) < rev
    undirected_id = np.cumsum(is_representative) - 1
    edge_to_undirected = np.where(is_representative, undirected_id, undirected_id.take(rev))
    return _like(reverse, edge_to_undirected), _like(reverse, np.flatnonzero(is_representative))


def pair_undirected(edge_index: Tensor, edge_shift: Tensor, num_nodes: int) -> tuple[Tensor, Tensor]:
    """Map each directed edge of any symmetric edge list to its undirected edge.

    Returns:
        as :func:`undirected_from_reverse`.

    Raises:
        ValueError if some edge (i, j, S) has no reverse (j, i, -S).
    """
    device = edge_index.device
    n_edges = edge_index.shape[1]
    if n_edges == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty
    neighbour, centre = edge_index
    shift = edge_shift.round().long()
    reach = int(shift.abs().max()) + 1
    base = 2 * reach + 1
    weights = torch.tensor([base * base, base, 1], device=device)
    code = ((shift + reach) * weights).sum(-1)
    cube = base**3
    key = (centre * num_nodes + neighbour) * cube + code
    reverse_key = (neighbour * num_nodes + centre) * cube + (cube - 1 - code)  # code of -S
    sorted_key, order = torch.sort(key)
    slot = torch.searchsorted(sorted_key, reverse_key).clamp(max=n_edges - 1)
    if not bool((sorted_key[slot] == reverse_key).all()):
        raise ValueError("neighbour list is not symmetric: some edge (i, j, S) has no (j, i, -S)")
    return undirected_from_reverse(order[slot])


def angle_edge_pairs(
    edge_index: Tensor | np.ndarray, edge_length: Tensor | np.ndarray, num_nodes: int, cutoff: float
) -> Tensor | np.ndarray:
    """All ordered pairs of distinct directed edges with a common centre, both shorter than ``cutoff``.

    Short edge k (after a stable sort by centre) sits at rank ``a_k`` in its centre's group of
    ``c`` short edges starting at ``start_k``; its ``c - 1`` partners are enumerated by
    ``w = 0..c-2`` as ``start_k + w + [w >= a_k]`` (skipping itself), so no pair is made and dropped.

    Returns:
        angle_edges (2, A) long: directed edge indices (e1, e2), grouped by centre, then by e1; a
        tensor on ``edge_index``'s device for tensors, a numpy array for arrays (computed in numpy).
    """
    short = np.flatnonzero(_host(edge_length) < cutoff)
    centre = _host(edge_index)[1].take(short)
    perm = np.argsort(centre, kind="stable")
    short, centre = short.take(perm), centre.take(perm)
    per_centre = np.bincount(centre, minlength=num_nodes)
    start = (np.cumsum(per_centre) - per_centre).take(centre)  # (m,) group start of each short edge
    rank = np.arange(len(short)) - start
    partners = per_centre.take(centre) - 1
    first = np.repeat(np.arange(len(short)), partners)  # (A,) index into short
    w = np.arange(len(first)) - (np.cumsum(partners) - partners).take(first)
    second = start.take(first) + w + (w >= rank.take(first))
    return _like(edge_index, np.stack([short.take(first), short.take(second)]))


def _host(array: Tensor | np.ndarray) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, Tensor) else np.asarray(array)


def _like(reference: Tensor | np.ndarray, array: np.ndarray) -> Tensor | np.ndarray:
    """``array`` as a tensor on ``reference``'s device if that is a tensor, else as is."""
    return torch.from_numpy(array).to(reference.device) if isinstance(reference, Tensor) else array
