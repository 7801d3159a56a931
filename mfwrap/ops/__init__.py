"""The scatter sum used by mfwrap (mechanism C) and by the backbones, behind one seam with several backends.

Backends ("torch", "torch_scatter", "triton") are chosen per call from the tensor's device, or
forced with :func:`set_backend`, :func:`use_backend` or ``MFWRAP_SCATTER_BACKEND``; see
:mod:`mfwrap.ops.backend`. :func:`get_backend` tells which one runs.
"""

from mfwrap.ops.backend import available_backends, get_backend, set_backend, use_backend
from mfwrap.ops.scatter import scatter_sum, scatter_sum_float64

__all__ = [
    "available_backends",
    "get_backend",
    "scatter_sum",
    "scatter_sum_float64",
    "set_backend",
    "use_backend",
]
