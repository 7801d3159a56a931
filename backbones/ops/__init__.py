"""Scatter / segment reductions used by the backbones, behind one seam with several backends."""

from backbones.ops.scatter import scatter_sum

__all__ = ["scatter_sum"]
