"""Scatter / segment reductions used by the backbones, behind one seam with several backends.

Backends ("torch", "torch_scatter", "triton") are chosen per call from the tensor's device, or
forced with :func:`set_backend`, :func:`use_backend` or ``MFWRAP_SCATTER_BACKEND``; see
:mod:`backbones.ops.backend`. :func:`get_backend` tells which one runs.
"""

from backbones.ops.backend import available_backends, get_backend, set_backend, use_backend
from backbones.ops.csr import CSR
from backbones.ops.scatter import (
    gather,
    gather_mul_segment_sum,
    scatter_sum,
    segment_gather,
    segment_sum,
)

__all__ = [
    "CSR",
    "available_backends",
    "gather",
    "gather_mul_segment_sum",
    "get_backend",
    "scatter_sum",
    "segment_gather",
    "segment_sum",
    "set_backend",
    "use_backend",
]
