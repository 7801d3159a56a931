"""The "torch_scatter" backend: the forward pass through the ``torch_scatter`` extension.

``torch_scatter.scatter`` with ``reduce="sum"`` (for a sum this is torch's own ``scatter_add_`` on a
broadcast index). Autograd is in scatter.py.
"""

from __future__ import annotations

import torch_scatter
from torch import Tensor


def scatter_sum(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    """``out[k] = Σ_{e : index[e] = k} src[e]`` for src (E, F)."""
    return torch_scatter.scatter(src, index, dim=0, dim_size=dim_size, reduce="sum")
