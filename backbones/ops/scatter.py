"""Scatter / segment sums along dim 0 and their gathers, differentiable to any order.

For rows e = 0..E-1 with destination ``index[e]`` in [0, K):

    scatter_sum(src, index, K)[k]            = Σ_{e : index[e] = k} src[e]
    gather(x, index)[e]                      = x[index[e]]
    segment_sum(src, csr)[k]                 = Σ_{e : csr.index[e] = k} src[e]
    segment_gather(x, csr)[e]                = x[csr.index[e]]
    gather_mul_segment_sum(x, w, csr, g)[k]  = Σ_{e : csr.index[e] = k} w[e] ⊙ x[g.index[e]]

Rows may carry any trailing shape (``src`` (E, ...)). Indices are not range-checked (that would
need a host-device synchronisation): out-of-range rows raise on the torch backend and are
dropped by the others. The ``segment_*`` forms take a :class:`~backbones.ops.csr.CSR` built
once per batch; with the torch_scatter and triton backends they are deterministic.

Which backend runs is decided per call from the tensor's device (backbones.ops.backend). The
torch backend uses native ops (``index_add``, ``index_select``), differentiable to any order by
torch itself. The other backends go through the autograd Functions below, built on the pairs

    ∂/∂src scatter_sum = gather (same index),   ∂/∂x gather = scatter_sum (same index)

and the same for the segment pair, so every backward is made of differentiable ops of the same
backend: force training's double backward (and higher) works. The fused op's input gradient is
the same fused op with the two CSRs swapped (its transpose); its weight gradient is
``gather(grad) ⊙ gather(x)``.
"""

from __future__ import annotations

import math

from torch import Tensor
from torch.autograd import Function

from backbones.ops.backend import get_backend, implementation
from backbones.ops.csr import CSR


def _rows(t: Tensor) -> Tensor:
    """View (E, ...) as (E, F) with F the product of the trailing sizes (E = 0 allowed)."""
    return t.reshape(t.shape[0], math.prod(t.shape[1:]))


def _check_rows(src: Tensor, index: Tensor, what: str) -> None:
    if src.dim() == 0 or index.dim() != 1 or src.shape[0] != index.shape[0]:
        raise ValueError(f"{what}: need src (E, ...) and index (E,), got {tuple(src.shape)} and {tuple(index.shape)}")


def _index_add(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    return src.new_zeros((dim_size, *src.shape[1:])).index_add(0, index, src)


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


class _SegmentSum(Function):
    @staticmethod
    def forward(ctx, src: Tensor, csr: CSR, backend: str) -> Tensor:
        ctx.csr, ctx.backend = csr, backend
        out = implementation(backend).segment_sum(_rows(src), csr)
        return out.view(csr.dim_size, *src.shape[1:])

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _SegmentGather.apply(grad, ctx.csr, ctx.backend), None, None


class _SegmentGather(Function):
    @staticmethod
    def forward(ctx, x: Tensor, csr: CSR, backend: str) -> Tensor:
        ctx.csr, ctx.backend = csr, backend
        return x.index_select(0, csr.index)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _SegmentSum.apply(grad, ctx.csr, ctx.backend), None, None


class _GatherMulSegmentSum(Function):
    """Fused kernel (triton): ``out[k] = Σ_{e ∈ csr segment k} w[e] ⊙ x[gather_csr.index[e]]``."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, csr: CSR, gather_csr: CSR, backend: str) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.csr, ctx.gather_csr, ctx.backend = csr, gather_csr, backend
        out = implementation(backend).gather_mul_segment_sum(_rows(x), _rows(weight), csr, gather_csr.index)
        return out.view(csr.dim_size, *x.shape[1:])

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        csr, gather_csr, backend = ctx.csr, ctx.gather_csr, ctx.backend
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = _GatherMulSegmentSum.apply(grad, weight, gather_csr, csr, backend)
        if ctx.needs_input_grad[1]:
            product = _SegmentGather.apply(grad, csr, backend) * _SegmentGather.apply(x, gather_csr, backend)
            grad_weight = product if weight.dim() > 1 else product.flatten(1).sum(1)
        return grad_x, grad_weight, None, None, None


def scatter_sum(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    """Sum rows of ``src`` (E, ...) into ``dim_size`` rows by ``index`` (E,); any order of index.

    On the triton backend this uses atomic additions (run-to-run bit differences possible) unless
    ``torch.use_deterministic_algorithms(True)``; for a deterministic, atomic-free sum over the
    same index many times, build a :class:`CSR` once and use :func:`segment_sum`.
    """
    _check_rows(src, index, "scatter_sum")
    backend = get_backend(src.device)
    if backend == "torch":
        return _index_add(src, index, dim_size)
    return _ScatterSum.apply(src, index, dim_size, backend)


def gather(x: Tensor, index: Tensor) -> Tensor:
    """``x[index]`` along dim 0, whose backward is :func:`scatter_sum` of the active backend."""
    backend = get_backend(x.device)
    if backend == "torch":
        return x.index_select(0, index)
    return _Gather.apply(x, index, backend)


def segment_sum(src: Tensor, csr: CSR) -> Tensor:
    """Sum rows of ``src`` (E, ...) into ``csr.dim_size`` rows by ``csr.index`` (rows in any order)."""
    _check_rows(src, csr.index, "segment_sum")
    backend = get_backend(src.device)
    if backend == "torch":
        return _index_add(src, csr.index, csr.dim_size)
    return _SegmentSum.apply(src, csr, backend)


def segment_gather(x: Tensor, csr: CSR) -> Tensor:
    """``x[csr.index]`` along dim 0, whose backward is :func:`segment_sum` over ``csr``."""
    backend = get_backend(x.device)
    if backend == "torch":
        return x.index_select(0, csr.index)
    return _SegmentGather.apply(x, csr, backend)


def gather_mul_segment_sum(x: Tensor, weight: Tensor, csr: CSR, gather_csr: CSR) -> Tensor:
    """``out[k] = Σ_{e : csr.index[e] = k} weight[e] ⊙ x[gather_csr.index[e]]`` (message passing).

    Args:
        x: (N, ...) per-node terms, N = ``gather_csr.dim_size``.
        weight: (E,) per-row scalars or (E, ...) with x's trailing shape.
        csr: rows grouped by destination (K = ``csr.dim_size`` outputs).
        gather_csr: the same rows grouped by the node they read from x; its grouping makes the
            gradient with respect to x the same deterministic kernel (the transpose).

    Returns:
        (K, ...) with x's trailing shape. One fused kernel on the triton backend; gather,
        multiply and segment sum on the others.
    """
    if weight.dtype != x.dtype:
        raise ValueError(f"gather_mul_segment_sum: weight dtype {weight.dtype} differs from x dtype {x.dtype}")
    if weight.shape[0] != csr.num_rows or (weight.dim() > 1 and weight.shape[1:] != x.shape[1:]):
        raise ValueError(
            f"gather_mul_segment_sum: weight must be ({csr.num_rows},) or ({csr.num_rows}, *{tuple(x.shape[1:])}), "
            f"got {tuple(weight.shape)}"
        )
    if gather_csr.num_rows != csr.num_rows or gather_csr.dim_size != x.shape[0]:
        raise ValueError(
            f"gather_mul_segment_sum: gather_csr must group the same {csr.num_rows} rows into x's "
            f"{x.shape[0]} rows, got {gather_csr.num_rows} rows into {gather_csr.dim_size}"
        )
    backend = get_backend(x.device)
    if backend == "triton":
        return _GatherMulSegmentSum.apply(x, weight, csr, gather_csr, backend)
    w = weight.reshape(weight.shape[0], *([1] * (x.dim() - 1))) if weight.dim() == 1 else weight
    return segment_sum(w * segment_gather(x, gather_csr), csr)
