"""Triton kernels for the "triton" scatter backend (forward pass only; autograd is in scatter.py).

:func:`scatter_sum` of src (E, F) by index (E,) into K rows, row-major, with one of two kernels:

``_scatter_atomic_kernel`` (the default): one program per block of rows, ``atomic_add`` into the
output. Summation order, hence the last bits of float results, can vary between runs.

``_sorted_segment_kernel`` (when ``torch.use_deterministic_algorithms(True)``): the rows are
stably sorted by destination once (``perm``, with segment offsets ``ptr`` from a binary search);
one program per (segment k, block of features), no atomics, so the result is deterministic:

    out[k, f] = Σ_{p = ptr[k]}^{ptr[k+1]-1} src[perm[p], f]

Both accumulate in float32 (float64 for float64 data).

Importing this module imports triton. Kernels run on CUDA tensors, or on CPU tensors when the
Triton interpreter is on (``TRITON_INTERPRET=1`` before triton's first import; ``INTERPRETED``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.runtime.interpreter import InterpretedFunction

_MAX_BLOCK_F = 128
_TILE = 2048  # elements of the (BLOCK_E, BLOCK_F) tile a program accumulates
# Fused multiply-add off: the kernels only add, so this changes no result, but Triton 3.9 warns
# when the option is unset (its default changes in 3.10).
_OPTIONS = {"enable_fp_fusion": False}


@triton.jit
def _sorted_segment_kernel(
    src_ptr,
    out_ptr,
    seg_ptr,
    perm_ptr,
    num_features,
    ACC_DTYPE: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_F: tl.constexpr,
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
        row = tl.load(perm_ptr + p, mask=e_mask, other=0)
        mask = e_mask[:, None] & f_mask[None, :]
        acc += tl.load(src_ptr + row[:, None] * num_features + f[None, :], mask=mask, other=0.0).to(ACC_DTYPE)
    total = tl.sum(acc, axis=0)
    tl.store(out_ptr + segment * num_features + f, total.to(out_ptr.dtype.element_ty), mask=f_mask)


@triton.jit
def _scatter_atomic_kernel(
    src_ptr,
    index_ptr,
    out_ptr,
    num_rows,
    num_features,
    dim_size,
    BLOCK_E: tl.constexpr,
    BLOCK_F: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64) * BLOCK_E + tl.arange(0, BLOCK_E)
    f = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    r_mask = row < num_rows
    target = tl.load(index_ptr + row, mask=r_mask, other=0).to(tl.int64)
    r_mask = r_mask & (target >= 0) & (target < dim_size)
    mask = r_mask[:, None] & (f < num_features)[None, :]
    value = tl.load(src_ptr + row[:, None] * num_features + f[None, :], mask=mask, other=0.0)
    tl.atomic_add(out_ptr + target[:, None] * num_features + f[None, :], value.to(out_ptr.dtype.element_ty), mask=mask)


INTERPRETED: bool = isinstance(_scatter_atomic_kernel, InterpretedFunction)


def _check_device(t: Tensor) -> None:
    if t.device.type != "cuda" and not INTERPRETED:
        raise RuntimeError(
            f"the triton scatter backend got a {t.device.type} tensor: Triton kernels need CUDA tensors, "
            "or the Triton interpreter (TRITON_INTERPRET=1 set before triton is first imported)"
        )


def _blocks(num_features: int) -> tuple[int, int]:
    block_f = min(_MAX_BLOCK_F, triton.next_power_of_2(max(num_features, 1)))
    return max(16, _TILE // block_f), block_f


def _sorted_scatter_sum(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    """Deterministic: one stable sort by destination, then one program per (segment, feature block).

    Rows with an index outside [0, dim_size) belong to no segment and are dropped.
    """
    num_features = src.shape[1]
    out = src.new_empty((dim_size, num_features))
    if out.numel() == 0:
        return out
    if src.shape[0] == 0:
        return out.zero_()
    ordered, perm = torch.sort(index.long(), stable=True)
    ptr = torch.searchsorted(ordered, torch.arange(dim_size + 1, dtype=torch.long, device=index.device))
    block_e, block_f = _blocks(num_features)
    grid = (dim_size, triton.cdiv(num_features, block_f))
    acc_dtype = tl.float64 if src.dtype == torch.float64 else tl.float32
    _sorted_segment_kernel[grid](
        src.contiguous(),
        out,
        ptr,
        perm,
        num_features,
        ACC_DTYPE=acc_dtype,
        BLOCK_E=block_e,
        BLOCK_F=block_f,
        **_OPTIONS,
    )
    return out


def scatter_sum(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    """``out[k] = Σ_{e : index[e] = k} src[e]`` for src (E, F), any order of ``index``.

    Atomic additions (rows with an index outside [0, dim_size) are dropped), or, when torch's
    deterministic mode is on, :func:`_sorted_scatter_sum`.
    """
    _check_device(src)
    if torch.are_deterministic_algorithms_enabled():
        return _sorted_scatter_sum(src, index, dim_size)
    num_rows, num_features = src.shape
    acc_dtype = torch.float64 if src.dtype == torch.float64 else torch.float32
    out = torch.zeros((dim_size, num_features), dtype=acc_dtype, device=src.device)
    if num_rows == 0 or out.numel() == 0:
        return out.to(src.dtype)
    block_e, block_f = _blocks(num_features)
    grid = (triton.cdiv(num_rows, block_e), triton.cdiv(num_features, block_f))
    _scatter_atomic_kernel[grid](
        src.contiguous(), index, out, num_rows, num_features, dim_size, BLOCK_E=block_e, BLOCK_F=block_f, **_OPTIONS
    )
    return out.to(src.dtype)
