"""Undirected pairing of directed edges and angle triplets (a "bond graph"), vectorised.

CHGNet's bond graph: each undirected edge {(i, j, S), (j, i, -S)} is one bond; an angle is an
ordered pair (e1, e2), e1 != e2, of directed edges leaving the same centre atom, both shorter
than the bond-graph cutoff (3 Å in CHGNet). Every centre with c short edges has c (c - 1) angles.
"""

from __future__ import annotations

import torch
from torch import Tensor


def pair_undirected(edge_index: Tensor, edge_shift: Tensor, num_nodes: int) -> tuple[Tensor, Tensor]:
    """Map each directed edge to its undirected edge.

    Returns:
        edge_to_undirected (E,) long; undirected_to_edge (U,) long, the lower-indexed directed edge
        of each pair, with undirected ids numbered in the order of those representatives.

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
    code = ((shift + reach) * torch.tensor([base * base, base, 1], device=device)).sum(-1)
    reverse_code = ((reach - shift) * torch.tensor([base * base, base, 1], device=device)).sum(-1)
    cube = base**3
    key = (centre * num_nodes + neighbour) * cube + code
    reverse_key = (neighbour * num_nodes + centre) * cube + reverse_code
    sorted_key, order = torch.sort(key)
    slot = torch.searchsorted(sorted_key, reverse_key).clamp(max=n_edges - 1)
    if not bool((sorted_key[slot] == reverse_key).all()):
        raise ValueError("neighbour list is not symmetric: some edge (i, j, S) has no (j, i, -S)")
    reverse = order[slot]
    edge_ids = torch.arange(n_edges, device=device)
    is_representative = edge_ids < reverse
    undirected_id = torch.cumsum(is_representative.long(), 0) - 1
    edge_to_undirected = torch.where(is_representative, undirected_id, undirected_id[reverse])
    undirected_to_edge = edge_ids[is_representative]
    return edge_to_undirected, undirected_to_edge


def angle_edge_pairs(edge_index: Tensor, edge_length: Tensor, num_nodes: int, cutoff: float) -> Tensor:
    """All ordered pairs of distinct directed edges with a common centre, both shorter than ``cutoff``.

    Returns:
        angle_edges (2, A) long: directed edge indices (e1, e2), grouped by centre.
    """
    device = edge_index.device
    short = (edge_length < cutoff).nonzero(as_tuple=True)[0]
    centre = edge_index[1, short]
    centre, perm = torch.sort(centre, stable=True)
    short = short[perm]
    per_centre = torch.bincount(centre, minlength=num_nodes)
    group_start = torch.cumsum(per_centre, 0) - per_centre
    group_size = per_centre[centre]  # for each short edge, how many share its centre
    first = torch.arange(short.numel(), device=device).repeat_interleave(group_size)
    pair_start = torch.cumsum(group_size, 0) - group_size
    within = torch.arange(first.numel(), device=device) - pair_start.repeat_interleave(group_size)
    second = group_start[centre[first]] + within
    distinct = first != second
    return torch.stack([short[first[distinct]], short[second[distinct]]])
