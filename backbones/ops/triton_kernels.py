"""Triton kernels for the "triton" scatter backend (forward passes only; autograd is in scatter.py).

Two kernels, both on row-major 2-D data (rows, F):

``_segment_kernel``, one program per (segment k, block of features), no atomics, deterministic:

    out[k, f] = Σ_{p = ptr[k]}^{ptr[k+1]-1} w[e_p, f] · x[g(e_p), f],    e_p = perm[p]

where ``perm`` (the CSR sort), ``g`` (a gather index) and ``w`` (per-row weights, (E, F) or
(E, 1)) are each optional (identity / identity / 1). With all three it fuses "gather per-atom
terms onto edges × edge weights → sum over each atom's edges" into one pass that never writes
the (E, F) product to memory. Accumulation is in float32 (float64 for float64 data).

``_scatter_atomic_kernel``, for an unsorted index without a CSR: one program per block of rows,
``atomic_add`` into the output. Summation order, hence the last bits of float results, can vary
between runs; with ``torch.use_deterministic_algorithms(True)`` :func:`scatter_sum` sorts instead.

Importing this module imports triton. Kernels run on CUDA tensors, or on CPU tensors when the
Triton interpreter is on (``TRITON_INTERPRET=1`` before triton's first import; ``INTERPRETED``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.runtime.interpreter import InterpretedFunction

from backbones.ops.csr import CSR

_MAX_BLOCK_F = 128
_TILE = 2048  # elements of the (BLOCK_E, BLOCK_F) tile a program accumulates
# No fused multiply-add: each w·x product is rounded as in torch's composite (and the default
# of this option changes between Triton versions).
_OPTIONS = {"enable_fp_fusion": False}


@triton.jit
def _segment_kernel(
    x_ptr, w_ptr, out_ptr, seg_ptr, perm_ptr, gather_ptr,
    num_features, w_row_stride, w_col_stride,
    HAS_PERM: tl.constexpr, HAS_GATHER: tl.constexpr, HAS_WEIGHT: tl.constexpr,
    ACC_DTYPE: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_F: tl.constexpr,
):
    segment = tl.program_id(0).to(tl.int64)
    f = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    f_mask = f < num_features
    start = tl.load(seg_ptr + segment)
    end = tl.load(seg_ptr + segment + 1)
    acc = tl.zeros((BLOCK_E, BLOCK_F), dtype=ACC_DTYPE)
    for first in range(start, end, BLOCK_E):
        p = first + tl.arange(0, BLOCK_E)
        e_mask = p < end
        if HAS_PERM:
            edge = tl.load(perm_ptr + p, mask=e_mask, other=0)
        else:
            edge = p
        if HAS_GATHER:
            row = tl.load(gather_ptr + edge, mask=e_mask, other=0)
        else:
            row = edge
        mask = e_mask[:, None] & f_mask[None, :]
        term = tl.load(x_ptr + row[:, None] * num_features + f[None, :], mask=mask, other=0.0).to(ACC_DTYPE)
        if HAS_WEIGHT:
            w_offset = edge[:, None] * w_row_stride + f[None, :] * w_col_stride
            term = term * tl.load(w_ptr + w_offset, mask=mask, other=0.0).to(ACC_DTYPE)
        acc += term
    total = tl.sum(acc, axis=0)
    tl.store(out_ptr + segment * num_features + f, total.to(out_ptr.dtype.element_ty), mask=f_mask)


@triton.jit
def _scatter_atomic_kernel(
    src_ptr, index_ptr, out_ptr, num_rows, num_features, dim_size,
    BLOCK_E: tl.constexpr, BLOCK_F: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64) * BLOCK_E + tl.arange(0, BLOCK_E)
    f = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    r_mask = row < num_rows
    target = tl.load(index_ptr + row, mask=r_mask, other=0).to(tl.int64)
    r_mask = r_mask & (target >= 0) & (target < dim_size)
    mask = r_mask[:, None] & (f < num_features)[None, :]
    value = tl.load(src_ptr + row[:, None] * num_features + f[None, :], mask=mask, other=0.0)
    tl.atomic_add(out_ptr + target[:, None] * num_features + f[None, :], value.to(out_ptr.dtype.element_ty), mask=mask)


INTERPRETED: bool = isinstance(_segment_kernel, InterpretedFunction)


def _check_device(t: Tensor) -> None:
    if t.device.type != "cuda" and not INTERPRETED:
        raise RuntimeError(
            f"the triton scatter backend got a {t.device.type} tensor: Triton kernels need CUDA tensors, "
            "or the Triton interpreter (TRITON_INTERPRET=1 set before triton is first imported)"
        )


def _blocks(num_features: int) -> tuple[int, int]:
    block_f = min(_MAX_BLOCK_F, triton.next_power_of_2(max(num_features, 1)))
    return max(16, _TILE // block_f), block_f


def _acc_dtype(dtype: torch.dtype) -> tl.dtype:
    return tl.float64 if dtype == torch.float64 else tl.float32


def _segment(x: Tensor, csr: CSR, gather_index: Tensor | None, weight: Tensor | None) -> Tensor:
    _check_device(x)
    num_features = x.shape[1]
    out = x.new_empty((csr.dim_size, num_features))
    if out.numel() == 0:
        return out
    if csr.num_rows == 0:
        return out.zero_()
    x = x.contiguous()
    w = x if weight is None else weight.contiguous()
    w_col_stride = 0 if w.shape[1] == 1 else w.stride(1)
    block_e, block_f = _blocks(num_features)
    grid = (csr.dim_size, triton.cdiv(num_features, block_f))
    _segment_kernel[grid](
        x, w, out, csr.ptr,
        csr.ptr if csr.perm is None else csr.perm,
        csr.ptr if gather_index is None else gather_index,
        num_features, w.stride(0), w_col_stride,
        HAS_PERM=csr.perm is not None, HAS_GATHER=gather_index is not None, HAS_WEIGHT=weight is not None,
        ACC_DTYPE=_acc_dtype(x.dtype), BLOCK_E=block_e, BLOCK_F=block_f, **_OPTIONS,
    )
    return out


def segment_sum(src: Tensor, csr: CSR) -> Tensor:
    """``out[k] = Σ_{e : csr.index[e] = k} src[e]`` for src (E, F): CSR kernel, deterministic."""
    return _segment(src, csr, None, None)


def gather_mul_segment_sum(x: Tensor, weight: Tensor, csr: CSR, gather_index: Tensor) -> Tensor:
    """``out[k] = Σ_{e : csr.index[e] = k} weight[e] ⊙ x[gather_index[e]]``, one fused pass.

    x (N, F); weight (E, F) or (E, 1); gather_index (E,) int64 into x's rows.
    """
    return _segment(x, csr, gather_index.long(), weight)


def scatter_sum(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    """``out[k] = Σ_{e : index[e] = k} src[e]`` for src (E, F), any order of ``index``.

    Atomic additions (rows with an index outside [0, dim_size) are dropped), or, when torch's
    deterministic mode is on, a sort into a :class:`CSR` and the segment kernel.
    """
    _check_device(src)
    if torch.are_deterministic_algorithms_enabled():
        return segment_sum(src, CSR.from_index(index, dim_size))
    num_rows, num_features = src.shape
    acc_dtype = torch.float64 if src.dtype == torch.float64 else torch.float32
    out = torch.zeros((dim_size, num_features), dtype=acc_dtype, device=src.device)
    if num_rows == 0 or out.numel() == 0:
        return out.to(src.dtype)
    block_e, block_f = _blocks(num_features)
    grid = (triton.cdiv(num_rows, block_e), triton.cdiv(num_features, block_f))
    _scatter_atomic_kernel[grid](src.contiguous(), index, out, num_rows, num_features, dim_size,
                                 BLOCK_E=block_e, BLOCK_F=block_f, **_OPTIONS)
    return out.to(src.dtype)
