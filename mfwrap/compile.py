"""``mfwrap.compile_model``: a backbone or a multi-fidelity model under ``torch.compile``.

A backbone supports compilation by providing ``compiled(**options) -> nn.Module``: a module with
the backbone contract (``graph_spec``, ``forward(batch)``) and, so that force and stress training
works compiled, ``energy_and_gradients(batch)`` (see :func:`mfwrap.physics.energy_and_derivatives`).
The native CHGNet does (:mod:`backbones.chgnet.compiled`).

A :class:`~mfwrap.MultiFidelity` compiles through its backbone's compiled path
(:class:`CompiledMultiFidelity`): the surgery's modules sit inside the backbone's network, so they
are traced with it. They run in the fidelity context's *dense* mode (every row gets its fidelity's
term by a gather; each readout copy sees every row and each row keeps its own copy's output), which
has no data-dependent sizes and no host synchronisation, so one graph serves batches of one
fidelity and of mixed fidelities, of any size.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from mfwrap.files import default_cache_dir


def inductor_cache_dir() -> Path:
    """Where inductor keeps compiled code between runs: ``$TORCHINDUCTOR_CACHE_DIR``, which
    :func:`compile_model` sets to ``<mfwrap cache>/inductor`` unless the user has set it."""
    return Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or default_cache_dir() / "inductor")


def compile_model(model: nn.Module, **options: Any) -> nn.Module:
    """``model.compiled(**options)``; options go to ``torch.compile`` (``fullgraph=True`` by default).

    The first call for each kind of batch (single structure or several; with or without
    parameter gradients) compiles, which takes tens of seconds to minutes on a CPU; other
    structure sizes then reuse the compiled code, and later runs reuse inductor's on-disk cache
    (:func:`inductor_cache_dir`; seconds instead of minutes).
    """
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(inductor_cache_dir()))
    compiled = getattr(model, "compiled", None)
    if compiled is None:
        raise TypeError(f"{type(model).__name__} does not support compilation (it has no compiled() method)")
    return compiled(**options)


class CompiledMultiFidelity(nn.Module):
    """A multi-fidelity model whose backbone network runs under ``torch.compile`` (module docstring).

    Args:
        model: the :class:`~mfwrap.MultiFidelity` (parameters shared, not copied; ``self.model``).
        **options: for the backbone's ``compiled()`` and so ``torch.compile``.

    Raises:
        TypeError: the backbone has no compiled path (the message says which backbone).
    """

    def __init__(self, model: nn.Module, **options: Any) -> None:
        super().__init__()
        backbone = model.backbone
        if getattr(backbone, "compiled", None) is None:
            raise TypeError(
                f"{type(backbone).__name__} has no compiled path (no compiled() method), so MultiFidelity around it "
                "cannot be compiled; it runs eagerly as it is"
            )
        self.model = model
        self.network = backbone.compiled(**options)
        self.graph_spec = model.graph_spec

    @property
    def fidelity_names(self) -> tuple[str, ...]:
        return self.model.fidelity_names

    @contextmanager
    def _bound(self, batch) -> Iterator[None]:
        """The model's :meth:`~mfwrap.MultiFidelity.evaluating` in dense mode; the per-row fidelities
        vary in size like the graph, so they are marked dynamic for the compiler."""
        with self.model.evaluating(batch, dense=True):
            for rows in self.model.context.bound_rows.values():
                torch._dynamo.mark_dynamic(rows, 0)
            yield

    def forward(self, batch) -> dict[str, Tensor]:
        """batch (with ``fidelity``) → the backbone's dict, each structure at its fidelity."""
        with self._bound(batch):
            return self.model.with_composition(self.network(batch))

    def energy_and_gradients(self, batch) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """(outputs, ∂E/∂r, ∂E/∂ε) from the backbone's compiled gradients (see mfwrap.physics); the
        composition energy depends on no position or strain, so the gradients are the network's."""
        with self._bound(batch):
            out, grad_pos, grad_strain = self.network.energy_and_gradients(batch)
            return self.model.with_composition(out), grad_pos, grad_strain
