"""Energy → forces and stress by automatic differentiation.

For structure b with strain ε_b (3×3, zero at evaluation), every position and lattice vector is
deformed as ``r → r (I + ε_b)``, ``L → L (I + ε_b)``; then

    F_i = -∂E/∂r_i                       (eV/Å)
    σ_b = (1/V_b) ∂E/∂ε_b · 160.21766    (GPa; V_b the undeformed volume, Å^3)

which is the sign convention of chgnet's ``predict_structure`` stress ('s') and of ASE (eV/Å^3
before the unit factor). With ``create_graph=True`` the returned forces and stress stay
differentiable in the parameters (training on forces needs a double backward).
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch_geometric.data import Batch

from mfwrap.data import keys as K
from mfwrap.data.graph import EV_PER_A3_TO_GPA, structure_index


def deform(pos: Tensor, cell: Tensor, strain: Tensor, structure: Tensor) -> tuple[Tensor, Tensor]:
    """Positions (n, 3) and cells (B, 3, 3) under strain ε (B, 3, 3): ``r (I + ε_b)``, ``L (I + ε_b)``."""
    deformation = torch.eye(3, dtype=pos.dtype, device=pos.device) + strain
    per_atom = torch.index_select(deformation, 0, structure)  # backward adds rows (see graph.edge_vectors_of)
    return torch.bmm(pos.unsqueeze(1), per_atom).squeeze(1), torch.bmm(cell, deformation)


def energy_and_derivatives(
    model: Callable[[Batch], dict[str, Tensor]],
    batch: Batch,
    *,
    forces: bool = True,
    stress: bool = True,
    create_graph: bool = False,
) -> dict[str, Tensor]:
    """Run ``model`` on ``batch`` and add forces and stress from autograd.

    ``model(batch)`` must return a dict with "energy" (num_structures,) total eV and may return
    more (e.g. "magmoms" (num_atoms,) μB), all passed through. A model that computes the
    derivatives itself (e.g. a compiled backbone, :mod:`backbones.chgnet.compiled`) provides
    ``model.energy_and_gradients(batch) -> (dict, ∂E/∂r (n, 3), ∂E/∂ε (B, 3, 3))``, which is used
    instead; its results are differentiable in the parameters exactly when ``create_graph``.

    Returns:
        the model's dict plus "forces" (num_atoms, 3) eV/Å and "stress" (num_structures, 3, 3) GPa
        when requested. Stress of a structure that is not periodic in all three directions is NaN.
    """
    num_structures = batch[K.CELL].shape[0]
    cell = batch[K.CELL]
    if (forces or stress) and hasattr(model, "energy_and_gradients"):
        with torch.set_grad_enabled(create_graph):
            out, *grads = model.energy_and_gradients(batch)
        grads = grads if stress else grads[:1]
        out = dict(out)
    else:
        out, grads = _autograd_derivatives(model, batch, forces, stress, create_graph)
    if forces:
        out[K.FORCES] = -grads[0]
    if stress:
        volume = torch.linalg.det(cell.detach()).abs()
        periodic = batch[K.PBC].reshape(num_structures, 3).all(dim=1)
        sigma = grads[-1] / volume.clamp_min(1e-12).view(-1, 1, 1) * EV_PER_A3_TO_GPA
        out[K.STRESS] = torch.where(periodic.view(-1, 1, 1), sigma, torch.full_like(sigma, float("nan")))
    return out


def _without_parameter_gradients(model: nn.Module) -> Callable[[Batch], dict[str, Tensor]]:
    """``model`` called with detached parameters: under an outer ``no_grad`` no one wants their
    gradients, so the graph built for ∂E/∂r and ∂E/∂ε need not track them (fewer nodes to record and
    to differentiate through). Outputs and derivatives are those of ``model``; the model is not modified."""
    detached = {name: parameter.detach() for name, parameter in model.named_parameters()}
    return lambda batch: functional_call(model, detached, (batch,))


def _autograd_derivatives(
    model: Callable[[Batch], dict[str, Tensor]], batch: Batch, forces: bool, stress: bool, create_graph: bool
) -> tuple[dict[str, Tensor], list[Tensor]]:
    """model(strained batch) and [∂E/∂r if forces, ∂E/∂ε if stress] by ``torch.autograd.grad``."""
    strained = copy.copy(batch)
    pos = batch[K.POSITIONS]
    inputs: list[Tensor] = []
    grads: list[Tensor] = []
    if (forces or stress) and not torch.is_grad_enabled() and isinstance(model, nn.Module):
        model = _without_parameter_gradients(model)
    # Under an outer no_grad the positions and strain must still enter the graph; energy alone
    # keeps the caller's grad mode (predict runs it without a graph).
    with torch.set_grad_enabled(forces or stress or torch.is_grad_enabled()):
        if forces:
            pos = pos.detach().requires_grad_(True)
            inputs.append(pos)
        if stress:
            strain = torch.zeros(batch[K.CELL].shape[0], 3, 3, dtype=pos.dtype, device=pos.device, requires_grad=True)
            inputs.append(strain)
            strained[K.POSITIONS], strained[K.CELL] = deform(pos, batch[K.CELL], strain, structure_index(batch))
        else:
            strained[K.POSITIONS] = pos
        out = dict(model(strained))
        if inputs:
            grads = torch.autograd.grad(out[K.ENERGY].sum(), inputs, create_graph=create_graph, allow_unused=True)
            grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]
    return out, grads
