"""``mfwrap.compile_model``: a backbone under ``torch.compile``, for ``predict``, ``Calculator`` and training.

A backbone supports compilation by providing ``compiled(**options) -> nn.Module``: a module with
the backbone contract (``graph_spec``, ``forward(batch)``) and, so that force and stress training
works compiled, ``energy_and_gradients(batch)`` (see :func:`mfwrap.physics.energy_and_derivatives`).
The native CHGNet does (:mod:`backbones.chgnet.compiled`).
"""

from __future__ import annotations

from typing import Any

from torch import nn


def compile_model(model: nn.Module, **options: Any) -> nn.Module:
    """``model.compiled(**options)``; options go to ``torch.compile`` (``fullgraph=True`` by default).

    The first call for each kind of batch (single structure or several; with or without
    parameter gradients) compiles, which takes tens of seconds to minutes on a CPU; other
    structure sizes then reuse the compiled code.
    """
    compiled = getattr(model, "compiled", None)
    if compiled is None:
        raise TypeError(f"{type(model).__name__} does not support compilation (it has no compiled() method)")
    return compiled(**options)
