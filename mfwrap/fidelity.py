"""Fidelity names and the per-row fidelity of a batch.

A fidelity is a string for users and an integer ``f`` in ``0..n_F-1`` inside a model. A batch
carries one index per structure (``batch.fidelity``, (B,)); every tensor row inside a backbone
belongs to one structure, so its fidelity follows from index tensors of the graph:

    structure   f_b              = fidelity[b]
    atom        f_i              = fidelity[batch[i]]
    edge        f_e              = f_atom[edge_index[1, e]]        (the centre atom's structure)
    undirected  f_u              = f_edge[undirected_to_edge[u]]
    angle       f_a              = f_edge[angle_edges[0, a]]

:class:`FidelityContext` computes these once per forward of the wrapper and hands them to the
modules the wrapper inserted into the backbone (no globals; each wrapper owns one context).
The row tensors are integer indices, so they are inert under autograd (double backward safe).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import Tensor
from torch_geometric.data import Data

from mfwrap.data import keys as K
from mfwrap.data.graph import structure_index

ATOM, EDGE, UNDIRECTED, ANGLE, STRUCTURE = "atom", "edge", "undirected", "angle", "structure"
ROW_KINDS = (ATOM, EDGE, UNDIRECTED, ANGLE, STRUCTURE)


def validate_fidelity_names(names: Sequence[str]) -> tuple[str, ...]:
    """Check that ``names`` is a non-empty sequence of distinct non-empty strings."""
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise TypeError(f"fidelities must be a list of strings, got {names!r}")
    names = tuple(names)
    if not names:
        raise ValueError("at least one fidelity name is required")
    for name in names:
        if not isinstance(name, str) or not name:
            raise TypeError(f"fidelity names must be non-empty strings, got {name!r}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate fidelity names {duplicates}")
    return names


def fidelity_rows(batch: Data, kinds: Sequence[str]) -> dict[str, Tensor]:
    """Fidelity index of every row of each kind in ``kinds`` (see module docstring)."""
    structure = batch[K.FIDELITY].reshape(-1)
    rows = {STRUCTURE: structure, ATOM: structure[structure_index(batch)]}
    if EDGE in kinds or UNDIRECTED in kinds or ANGLE in kinds:
        rows[EDGE] = rows[ATOM][batch[K.EDGE_INDEX][1]]
    if UNDIRECTED in kinds:
        rows[UNDIRECTED] = rows[EDGE][batch[K.UNDIRECTED_TO_EDGE]]
    if ANGLE in kinds:
        rows[ANGLE] = rows[EDGE][batch[K.ANGLE_EDGES][0]]
    return rows


def row_counts(batch: Data) -> dict[str, int]:
    """Number of rows of each kind that ``batch`` has (kinds it lacks are left out)."""
    counts = {
        ATOM: int(batch[K.ATOMIC_NUMBERS].shape[0]),
        EDGE: int(batch[K.EDGE_INDEX].shape[1]),
        STRUCTURE: int(batch[K.CELL].shape[0]),
    }
    if K.UNDIRECTED_TO_EDGE in batch:
        counts[UNDIRECTED] = int(batch[K.UNDIRECTED_TO_EDGE].shape[0])
    if K.ANGLE_EDGES in batch:
        counts[ANGLE] = int(batch[K.ANGLE_EDGES].shape[1])
    return counts


class FidelityContext:
    """Per-row fidelity of the batch that the owning wrapper is evaluating.

    Inserted modules hold a reference to the context and read ``rows(kind)`` during the forward;
    outside :meth:`bound` the context is empty and reading it is an error (a fidelity-dependent
    layer cannot run without knowing the fidelity of its rows).
    """

    def __init__(self, num_fidelities: int) -> None:
        self.num_fidelities = num_fidelities
        self.kinds: set[str] = set()
        self.uniform: int | None = None
        self.dense = False
        self._batch: Data | None = None
        self._rows: dict[str, Tensor] = {}
        self._groups: dict[str, tuple[Tensor, list[int]]] = {}
        self._majority: dict[str, tuple[int, Tensor, Tensor]] = {}

    @contextmanager
    def bound(self, batch: Data, uniform: int | None = None, *, dense: bool = False) -> Iterator[None]:
        """Make ``batch``'s per-row fidelities available for the duration of one forward.

        ``uniform``: the fidelity of every structure when the batch has only one (lets modules
        take shortcuts), else None. ``dense``: modules compute every row the same way, with
        gathers and no data-dependent sizes (no host synchronisation; what ``torch.compile``
        needs), instead of grouping rows by fidelity.
        """
        try:
            self._rows = fidelity_rows(batch, tuple(self.kinds))
            self._batch, self.uniform, self.dense = batch, uniform, dense
            yield
        finally:
            self._batch, self._rows, self._groups, self._majority, self.uniform = None, {}, {}, {}, None
            self.dense = False

    @property
    def batch(self) -> Data:
        if self._batch is None:
            raise RuntimeError(
                "a fidelity-dependent module was called outside MultiFidelity.forward; "
                "call the wrapper, not its backbone"
            )
        return self._batch

    @property
    def bound_rows(self) -> dict[str, Tensor]:
        """{kind: (rows,) fidelity index} of the bound batch (empty outside :meth:`bound`)."""
        return dict(self._rows)

    def rows(self, kind: str, count: int, owner: str) -> Tensor:
        """(count,) long fidelity index of each row of ``kind``.

        ``count`` is the number of rows the calling module actually has; a mismatch means the
        module's row kind was detected wrongly (it varies between batches) and is an error.
        """
        if self._batch is None:
            self.batch  # raises the explanatory error
        rows = self._rows[kind]
        if rows.shape[0] != count:
            raise RuntimeError(
                f"fidelity module '{owner}' was detected to have one row per {kind} ({rows.shape[0]} "
                f"in this batch) but has {count} rows: its row kind varies between batches; pass "
                "row_kinds= to MultiFidelity or choose another place in the spec"
            )
        return rows

    def groups(self, kind: str, count: int, owner: str) -> tuple[Tensor, list[int]]:
        """Rows of ``kind`` sorted by fidelity: (permutation, count per fidelity), cached per forward."""
        self.rows(kind, count, owner)
        if kind not in self._groups:
            rows = self._rows[kind]
            order = torch.argsort(rows, stable=True)
            counts = torch.bincount(rows, minlength=self.num_fidelities).tolist()
            self._groups[kind] = (order, counts)
        return self._groups[kind]

    def majority(self, kind: str) -> tuple[int, Tensor, Tensor]:
        """(most common fidelity f0 among rows of ``kind``, indices of the other rows, their
        fidelities), cached per forward."""
        if self._batch is None:
            self.batch  # raises the explanatory error
        if kind not in self._majority:
            rows = self._rows[kind]
            base = int(torch.bincount(rows, minlength=self.num_fidelities).argmax())
            other = (rows != base).nonzero().squeeze(1)
            self._majority[kind] = (base, other, rows.index_select(0, other))
        return self._majority[kind]
