"""Δ-learning: a frozen low-fidelity base model plus a learned correction."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch_geometric.data import Data

from mfwrap.data import keys as K
from mfwrap.mechanisms.composition_fit import fit_composition, model_energies, with_energies
from mfwrap.model_file import starts_trained


def corrected(delta: Mapping[str, Tensor], base: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The Δ model's outputs from its two networks' (eager or compiled): the correction's outputs with
    E = E_base + E_Δ."""
    out = dict(delta)
    out[K.ENERGY] = out[K.ENERGY] + base[K.ENERGY]
    return out


class DeltaModel(nn.Module):
    """Δ-learning: a frozen low-fidelity ``base`` plus a learned correction ``delta``.

        E_high(x) = E_base(x) + E_Δ(x)          (eV; forces and stress follow by autograd)
        m_high(x) = m_Δ(x)                      (μB; the low fidelity has no magmom labels)

    Both networks read the same graph (their ``graph_spec`` must be equal). Training fits only
    ``delta``; the base's parameters are frozen when the model is built.
    """

    def __init__(self, base: nn.Module, delta: nn.Module) -> None:
        super().__init__()
        if base.graph_spec != delta.graph_spec:
            raise ValueError(f"base and delta read different graphs: {base.graph_spec} vs {delta.graph_spec}")
        self.base, self.delta = base, delta
        self.base.requires_grad_(False)
        self.graph_spec = delta.graph_spec

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this architecture (:mod:`mfwrap.model_file`)."""
        return {"base": self.base, "delta": self.delta}

    def compiled(self, **options: Any) -> nn.Module:
        """Base and correction each under their backbone's ``compiled()`` (:class:`CompiledDeltaModel`)."""
        return CompiledDeltaModel(self, **options)

    def forward(self, batch: Data) -> dict[str, Tensor]:
        return corrected(self.delta(batch), self.base(batch))

    def base_energies(self, graphs: Sequence[Data], batch_size: int = 16) -> Tensor:
        """(S,) float64 energies E_base (eV) of ``graphs``, without gradients."""
        return model_energies(self.base, graphs, batch_size)

    def starts_trained(self) -> bool:
        """Whether what trains, the correction, starts from trained weights
        (:func:`mfwrap.model_file.starts_trained`)."""
        return starts_trained(self.delta)

    def fit_composition(self, graphs: Sequence[Data], ridge: float = 1e-6, residual: bool = False) -> None:
        """Fit the correction's composition model to E_label − E_base (least squares); ``residual``: add
        to it the fit to E_label − E_base − E_Δ, the correction's own prediction included."""
        targets = torch.stack([g[K.ENERGY].double().reshape(()) for g in graphs]) - self.base_energies(graphs)
        fit_composition(self.delta, with_energies(graphs, targets), ridge=ridge, residual=residual)


class CompiledDeltaModel(nn.Module):
    """A :class:`DeltaModel` whose two networks run compiled; energies and their derivatives add:
    E = E_base + E_Δ, ∂E/∂r and ∂E/∂ε likewise; magmoms are the correction's."""

    def __init__(self, model: DeltaModel, **options: Any) -> None:
        super().__init__()
        missing = [part for part in (model.base, model.delta) if getattr(part, "compiled", None) is None]
        if missing:
            raise TypeError(f"{type(missing[0]).__name__} has no compiled path, so this DeltaModel cannot be compiled")
        self.model = model
        self.base, self.delta = model.base.compiled(**options), model.delta.compiled(**options)
        self.graph_spec = model.graph_spec

    def forward(self, batch: Data) -> dict[str, Tensor]:
        return corrected(self.delta(batch), self.base(batch))

    def energy_and_gradients(self, batch: Data) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        out, grad_pos, grad_strain = self.delta.energy_and_gradients(batch)
        base, base_pos, base_strain = self.base.energy_and_gradients(batch)
        return corrected(out, base), grad_pos + base_pos, grad_strain + base_strain
