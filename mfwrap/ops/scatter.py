"""Scatter sum along dim 0, differentiable to any order.

For rows e = 0..E-1 with destination ``index[e]`` in [0, K):

    scatter_sum(src, index, K)[k] = Σ_{e : index[e] = k} src[e]

Rows may carry any trailing shape (``src`` (E, ...)). Indices are not range-checked (that would
need a host-device synchronisation): out-of-range rows raise on the torch backend and are
dropped by the others.

Which backend runs is decided per call from the tensor's device (:mod:`mfwrap.ops.backend`). The
torch backend uses native ``index_add``, differentiable to any order by torch itself. The other
backends go through the autograd Functions below, built on the pair

    ∂/∂src scatter_sum = gather (same index),   ∂/∂x gather = scatter_sum (same index)

(gather: ``x[index]`` along dim 0), so every backward is made of differentiable ops of the same
backend: force training's double backward (and higher) works.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd import Function

from mfwrap.ops.backend import get_backend, implementation


def _rows(t: Tensor) -> Tensor:
    """View (E, ...) as (E, F) with F the product of the trailing sizes (E = 0 allowed)."""
    return t.reshape(t.shape[0], math.prod(t.shape[1:]))


class _ScatterSum(Function):
    @staticmethod
    def forward(ctx, src: Tensor, index: Tensor, dim_size: int, backend: str) -> Tensor:
        ctx.save_for_backward(index)
        ctx.backend = backend
        out = implementation(backend).scatter_sum(_rows(src), index, dim_size)
        return out.view(dim_size, *src.shape[1:])

    @staticmethod
    def backward(ctx, grad: Tensor):
        (index,) = ctx.saved_tensors
        return _Gather.apply(grad, index, ctx.backend), None, None, None


class _Gather(Function):
    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor, backend: str) -> Tensor:
        ctx.save_for_backward(index)
        ctx.dim_size, ctx.backend = x.shape[0], backend
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (index,) = ctx.saved_tensors
        return _ScatterSum.apply(grad, index, ctx.dim_size, ctx.backend), None, None


def scatter_sum(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    """Sum rows of ``src`` (E, ...) into ``dim_size`` rows by ``index`` (E,); any order of index.

    On the triton backend this uses atomic additions (run-to-run bit differences possible) unless
    ``torch.use_deterministic_algorithms(True)``, when it sorts the rows by destination instead.
    """
    if src.dim() == 0 or index.dim() != 1 or src.shape[0] != index.shape[0]:
        raise ValueError(
            f"scatter_sum: need src (E, ...) and index (E,), got {tuple(src.shape)} and {tuple(index.shape)}"
        )
    backend = get_backend(src.device)
    if backend == "torch":
        return src.new_zeros((dim_size, *src.shape[1:])).index_add(0, index, src)
    return _ScatterSum.apply(src, index, dim_size, backend)


def scatter_sum_float64(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    """:func:`scatter_sum` accumulated in float64, returned in ``src``'s dtype: for totals over many
    rows, such as a structure's energy Σ_i ε_i over its atoms, eV.

    A float32 running sum of n terms of size |ε| drifts like √n · 2⁻²⁴ · n|ε|, which for cells of
    hundreds of atoms exceeds 1e-5 eV/atom; accumulated in float64, the total carries only the final
    rounding to ``src``'s dtype. Devices without float64 (Apple's MPS) accumulate in float32.
    """
    if not src.is_floating_point() or src.dtype == torch.float64 or src.device.type == "mps":
        return scatter_sum(src, index, dim_size)
    return scatter_sum(src.to(torch.float64), index, dim_size).to(src.dtype)
