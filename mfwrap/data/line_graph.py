"""Undirected pairing of directed edges and angle triplets (a "bond graph"), vectorised.

CHGNet's bond graph: each undirected edge {(i, j, S), (j, i, -S)} is one bond; an angle is an
ordered pair (e1, e2), e1 != e2, of directed edges leaving the same centre atom, both shorter
than the bond-graph cutoff (3 Å in CHGNet). Every centre with c short edges has c (c - 1) angles.
"""

from __future__ import annotations

import torch
from torch import Tensor


def undirected_from_reverse(reverse: Tensor) -> tuple[Tensor, Tensor]:
    """Number the undirected edges given each directed edge's reverse (an involution without
    fixed points, e.g. :attr:`NeighbourList.reverse`).

    Returns:
        edge_to_undirected (E,) long; undirected_to_edge (U,) long, the lower-indexed directed edge
        of each pair, with undirected ids numbered in the order of those representatives.
    """
    is_representative = torch.arange(reverse.numel(), device=reverse.device) < reverse
    undirected_id = torch.cumsum(is_representative, 0) - 1
    edge_to_undirected = torch.where(is_representative, undirected_id, undirected_id[reverse])
    return edge_to_undirected, is_representative.nonzero().squeeze(1)


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


def angle_edge_pairs(edge_index: Tensor, edge_length: Tensor, num_nodes: int, cutoff: float) -> Tensor:
    """All ordered pairs of distinct directed edges with a common centre, both shorter than ``cutoff``.

    Short edge k (after a stable sort by centre) sits at rank ``a_k`` in its centre's group of
    ``c`` short edges starting at ``start_k``; its ``c - 1`` partners are enumerated by
    ``w = 0..c-2`` as ``start_k + w + [w >= a_k]`` (skipping itself), so no pair is made and dropped.

    Returns:
        angle_edges (2, A) long: directed edge indices (e1, e2), grouped by centre, then by e1.
    """
    device = edge_index.device
    short = (edge_length < cutoff).nonzero().squeeze(1)
    centre, perm = torch.sort(edge_index[1, short], stable=True)
    short = short[perm]
    per_centre = torch.bincount(centre, minlength=num_nodes)
    start = (torch.cumsum(per_centre, 0) - per_centre)[centre]  # (m,) group start of each short edge
    rank = torch.arange(short.numel(), device=device) - start
    partners = per_centre[centre] - 1
    first = torch.repeat_interleave(partners)  # (A,) index into short
    w = torch.arange(first.numel(), device=device) - (torch.cumsum(partners, 0) - partners)[first]
    second = start[first] + w + (w >= rank[first])
    return torch.stack([short[first], short[second]])
