"""Compressed-sparse-row view of a destination index, built once per batch.

For rows e = 0..E-1 of an edge (or angle) array with destination ``index[e]`` in [0, K), a
:class:`CSR` stores a stable sort of the rows by destination: ``perm`` lists the rows of segment k
in ``perm[ptr[k]:ptr[k+1]]`` (in increasing row order), so a segment sum

    out[k] = Σ_{p = ptr[k]}^{ptr[k+1]-1} src[perm[p]]

reads each row once and needs no atomic additions: the result is deterministic. Indices should
lie in [0, K); they are not checked (that would need a host-device synchronisation), and a row
outside belongs to no segment (the torch backend, which uses ``index`` directly, raises instead).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True, eq=False)
class CSR:
    """Rows grouped by destination.

    Attributes:
        index: (E,) int64 destination of each row, in the rows' own order.
        ptr: (K+1,) int64 segment offsets into ``perm``; ``ptr[k+1] - ptr[k]`` rows go to k.
        perm: (E,) int64 rows sorted by destination (stable), or None when ``index`` is
            already non-decreasing (then the rows of segment k are ``ptr[k]..ptr[k+1]-1``).
    """

    index: Tensor
    ptr: Tensor
    perm: Tensor | None = None

    @property
    def dim_size(self) -> int:
        """Number of segments K."""
        return self.ptr.shape[0] - 1

    @property
    def num_rows(self) -> int:
        """Number of rows E."""
        return self.index.shape[0]

    @classmethod
    def from_index(cls, index: Tensor, dim_size: int, *, is_sorted: bool = False) -> "CSR":
        """Group rows by ``index`` (E,) into ``dim_size`` segments.

        One stable sort (skipped when the caller states ``is_sorted``) and one binary search per
        segment boundary; no host-device synchronisation.
        """
        if index.dim() != 1:
            raise ValueError(f"CSR index must be 1-D, got shape {tuple(index.shape)}")
        if dim_size < 0:
            raise ValueError(f"dim_size must be >= 0, got {dim_size}")
        index = index.long()
        if is_sorted:
            ordered, perm = index, None
        else:
            ordered, perm = torch.sort(index, stable=True)
        bounds = torch.arange(dim_size + 1, dtype=torch.long, device=index.device)
        return cls(index=index, ptr=torch.searchsorted(ordered, bounds), perm=perm)

    def to(self, device: torch.device | str) -> "CSR":
        """This CSR with its tensors on ``device``."""
        perm = None if self.perm is None else self.perm.to(device)
        return CSR(index=self.index.to(device), ptr=self.ptr.to(device), perm=perm)
