"""Scatter-sum along dim 0: ``out[k] = Σ_{e : index[e] = k} src[e]``.

Native torch implementation (``index_add``), differentiable to any order.
"""

from __future__ import annotations

import torch
from torch import Tensor


def scatter_sum(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    """Sum rows of ``src`` (E, ...) into ``dim_size`` rows by ``index`` (E,)."""
    out = src.new_zeros((dim_size, *src.shape[1:]))
    return out.index_add(0, index, src)
