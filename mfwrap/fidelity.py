"""Fidelity names and the per-row fidelity of a batch.

A fidelity is a string for users and an integer ``f`` in ``0..n_F-1`` inside a model. A model's
names in index order are its ``fidelity_names`` (:func:`fidelity_names_of`); a model without them
(a backbone, a Δ model) is single-fidelity: one unnamed fidelity, index 0. :func:`resolve_fidelity`
turns a user's name into the index (every entry point: predict, the calculator, the CLI), and
:func:`check_batch_fidelities` checks that a batch's indices are among the model's (every forward
of a multi-fidelity model).

A batch carries one index per structure (``batch.fidelity``, (B,)); every tensor row inside a
backbone belongs to one structure, so its fidelity follows from index tensors of the graph:

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
from torch import Tensor, nn
from torch_geometric.data import Data

from mfwrap.data import keys as K
from mfwrap.data.graph import structure_index

ATOM, EDGE, UNDIRECTED, ANGLE, STRUCTURE = "atom", "edge", "undirected", "angle", "structure"
ROW_KINDS = (ATOM, EDGE, UNDIRECTED, ANGLE, STRUCTURE)

DEFAULT_FIDELITY = "default"  # the name reports and checkpoints give the one fidelity of a single-fidelity model


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


def is_multi_fidelity(model: nn.Module) -> bool:
    """Whether ``model`` names its fidelities (``fidelity_names``); one that does not (a backbone, a Δ
    model) is single-fidelity."""
    return bool(getattr(model, "fidelity_names", None))


def fidelity_names_of(model: nn.Module) -> tuple[str, ...]:
    """Names of ``model``'s fidelities in index order: its ``fidelity_names``, or ``(DEFAULT_FIDELITY,)``
    for a single-fidelity model."""
    return tuple(str(n) for n in model.fidelity_names) if is_multi_fidelity(model) else (DEFAULT_FIDELITY,)


def resolve_fidelity(
    model: nn.Module | Sequence[str], name: str | None, *, default: str | None = None, option: str = "fidelity="
) -> int:
    """Index of fidelity ``name`` among those of ``model`` (a model, or its fidelity names in index order).

    A model without ``fidelity_names`` (single-fidelity) accepts only None, index 0. Otherwise None
    stands for ``default`` (the fidelity a file stores as its model's) when given, else for the only
    fidelity when there is one; with several and no default a name is required, so a multi-fidelity
    model is never used without saying at which fidelity. ``option``: how the caller names a fidelity
    (``fidelity=`` in Python, ``--fidelity`` on the command line), for the error messages.

    Raises:
        ValueError: a name is required but missing, unknown (both name the model's fidelities), or
            given to a single-fidelity model.
    """
    if isinstance(model, nn.Module):
        if not is_multi_fidelity(model):
            if name is not None:
                raise ValueError(
                    f"fidelity {name!r} given, but {type(model).__name__} is a single-fidelity model: "
                    "leave the fidelity out"
                )
            return 0
        names = tuple(model.fidelity_names)
    else:
        names = tuple(model)
    if name is None:
        if default is None and len(names) != 1:
            raise ValueError(f"this model has {len(names)} fidelities {list(names)}: choose one with {option}")
        name = names[0] if default is None else default
    if name not in names:
        raise ValueError(f"unknown fidelity {name!r} (known: {list(names)}); choose one with {option}")
    return names.index(name)


def check_batch_fidelities(batch: Data, names: Sequence[str], *, asynchronous: bool = False) -> int | None:
    """Check that every structure of ``batch`` has a fidelity index ``0 <= f < len(names)``.

    Returns the fidelity shared by all structures, or None when they differ. ``asynchronous``:
    the range check is queued on the batch's device (``torch._assert_async``: no host
    synchronisation, as a compiled model needs; a bad index fails the step when it runs) and the
    return value is None.

    Raises:
        KeyError: the batch has no per-structure fidelity.
        ValueError: an index is out of range (the message names the indices and the fidelities).
    """
    if K.FIDELITY not in batch:
        raise KeyError(
            f"the batch has no '{K.FIDELITY}' (per-structure fidelity index); "
            "build graphs with to_graph(..., fidelity=)"
        )
    fidelity = batch[K.FIDELITY].reshape(-1)
    if asynchronous:
        torch._assert_async(((fidelity >= 0) & (fidelity < len(names))).all())
        return None
    lowest, highest = torch.stack(torch.aminmax(fidelity)).tolist()
    if lowest < 0 or highest >= len(names):
        raise ValueError(
            f"batch fidelity indices {sorted(set(fidelity.tolist()))} out of range for the fidelities "
            f"{list(names)}; build graphs with to_graph(..., fidelity=) at an index among these"
        )
    return lowest if lowest == highest else None


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

    def _require_bound(self) -> None:
        """Raise the explanatory error when no batch is bound (outside :meth:`bound`)."""
        if self._batch is None:
            raise RuntimeError(
                "a fidelity-dependent module was called outside MultiFidelity.forward; "
                "call the wrapper, not its backbone"
            )

    @property
    def batch(self) -> Data:
        self._require_bound()
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
        self._require_bound()
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
        self._require_bound()
        if kind not in self._majority:
            rows = self._rows[kind]
            base = int(torch.bincount(rows, minlength=self.num_fidelities).argmax())
            other = (rows != base).nonzero().squeeze(1)
            self._majority[kind] = (base, other, rows.index_select(0, other))
        return self._majority[kind]
