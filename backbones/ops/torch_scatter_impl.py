"""The "torch_scatter" backend: forward passes through the ``torch_scatter`` extension.

``segment_sum`` uses its compiled CSR kernel (``segment_csr``, deterministic) on the rows put in
segment order; ``scatter_sum`` uses ``torch_scatter.scatter`` (for a sum this is torch's own
``scatter_add_`` on a broadcast index). Autograd for both is in scatter.py.
"""

from __future__ import annotations

import torch_scatter
from torch import Tensor

from backbones.ops.csr import CSR


def segment_sum(src: Tensor, csr: CSR) -> Tensor:
    """``out[k] = Σ_{e : csr.index[e] = k} src[e]`` for src (E, F)."""
    ordered = src if csr.perm is None else src.index_select(0, csr.perm)
    return torch_scatter.segment_csr(ordered, csr.ptr, reduce="sum")


def scatter_sum(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    """``out[k] = Σ_{e : index[e] = k} src[e]`` for src (E, F)."""
    return torch_scatter.scatter(src, index, dim=0, dim_size=dim_size, reduce="sum")
