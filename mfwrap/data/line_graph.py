"""Undirected pairing of directed edges and angle triplets (a "bond graph"), vectorised.

CHGNet's bond graph: each undirected edge {(i, j, S), (j, i, -S)} is one bond; an angle is an
ordered pair (e1, e2), e1 != e2, of directed edges leaving the same centre atom, both shorter
than the bond-graph cutoff (3 Å in CHGNet). Every centre with c short edges has c (c - 1) angles.

The pairing and the angles are index bookkeeping on the host, done in numpy: for the few thousand
edges of a typical structure, torch's per-operation overhead would cost several times the work.
"""

from __future__ import annotations

import numpy as np


def undirected_from_reverse(reverse: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Number the undirected edges given each directed edge's reverse (an involution without
    fixed points, e.g. :attr:`~mfwrap.data.neighbors.NeighbourList.reverse`).

    Returns:
        edge_to_undirected (E,) int64; undirected_to_edge (U,) int64, the lower-indexed directed
        edge of each pair, with undirected ids numbered in the order of those representatives.
    """
    rev = np.asarray(reverse)
    is_representative = np.arange(len(rev)) < rev
    undirected_id = np.cumsum(is_representative) - 1
    edge_to_undirected = np.where(is_representative, undirected_id, undirected_id.take(rev))
    return edge_to_undirected, np.flatnonzero(is_representative)


def angle_edge_pairs(edge_index: np.ndarray, edge_length: np.ndarray, num_nodes: int, cutoff: float) -> np.ndarray:
    """All ordered pairs of distinct directed edges with a common centre, both shorter than ``cutoff``.

    Short edge k (after a stable sort by centre) sits at rank ``a_k`` in its centre's group of
    ``c`` short edges starting at ``start_k``; its ``c - 1`` partners are enumerated by
    ``w = 0..c-2`` as ``start_k + w + [w >= a_k]`` (skipping itself), so no pair is made and dropped.

    Args:
        edge_index: (2, E) int, row 1 = centre.
        edge_length: (E,) Å.

    Returns:
        angle_edges (2, A) int64: directed edge indices (e1, e2), grouped by centre, then by e1.
    """
    short = np.flatnonzero(np.asarray(edge_length) < cutoff)
    centre = np.asarray(edge_index)[1].take(short)
    perm = np.argsort(centre, kind="stable")
    short, centre = short.take(perm), centre.take(perm)
    per_centre = np.bincount(centre, minlength=num_nodes)
    start = (np.cumsum(per_centre) - per_centre).take(centre)  # (m,) group start of each short edge
    rank = np.arange(len(short)) - start
    partners = per_centre.take(centre) - 1
    first = np.repeat(np.arange(len(short)), partners)  # (A,) index into short
    w = np.arange(len(first)) - (np.cumsum(partners) - partners).take(first)
    second = start.take(first) + w + (w >= rank.take(first))
    return np.stack([short.take(first), short.take(second)])
