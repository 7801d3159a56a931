"""Composition models fitted by least squares: the one fit that every training method uses.

The composition model of CHGNet (and of the seed paper, eq. 10) is

    E_c = Σ_Z w_Z n_Z        (eV; n_Z the number of atoms of element Z in the structure)

equivalently ``E_c / N = Σ_Z w_Z x_Z`` with atom fractions ``x_Z = n_Z / N``. The weights ``w_Z``
(eV/atom) are fitted to per-atom energies, as chgnet's ``AtomRef.fit`` does:

    w = argmin_w  Σ_s (Σ_Z w_Z x_{s,Z} - E_s / N_s)^2  +  ridge · Σ_Z (w_Z - prior_Z)^2

Only elements present in the data are free; every other element keeps ``prior_Z`` (zeros unless
given). Collinear compositions (e.g. P and O always 1 : 4 in phosphates) make the plain problem
rank-deficient; the ridge term (and numpy's minimum-norm lstsq) gives a unique answer that
predicts the fitted energies equally well.

:func:`fit_composition` fits the composition model of any model the same way, so that
single-fidelity, transfer, Δ-learning and multi-fidelity runs are comparable: a model that owns
several parts (``MultiFidelity``, ``DeltaModel``) says how through its own ``fit_composition``;
for a plain backbone the module is the one its fidelity spec names (``composition``, e.g.
CHGNet's ``AtomRef`` or SchNet's ``atomref``). A model without one is an error, never a silent
skip.

A model that starts from trained weights (pretrained, warm-started, a new fidelity of a trained
model) already predicts most of the energy: refitting w to the raw labels would throw away what its
network explains. ``residual=True`` fits a correction instead,

    w ← w + Δ,   Δ = argmin_Δ  Σ_s (Σ_Z Δ_Z x_{s,Z} - (E_s - E_model(s)) / N_s)^2  +  ridge · |Δ|^2

to the residual of the model's own prediction E_model (its current composition included), so that
after the fit the model's energies are those of the best per-element shift of its own predictions
(:func:`model_energies`, :func:`with_energies`). The composition modules themselves (and mechanism C) are in
:mod:`mfwrap.mechanisms.composition`; the fit is a module beside it, not part of it, because it reads
a backbone's fidelity spec through :mod:`mfwrap.surgery`, which imports the mechanisms.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch_geometric.data import Batch, Data

from mfwrap.data import keys as K
from mfwrap.data.graph import MAX_ATOMIC_NUMBER
from mfwrap.mechanisms.composition import FidelityComposition, read_element_energies, write_element_energies
from mfwrap.surgery import resolve_spec


def element_counts(graphs: Sequence[Data], num_elements: int = MAX_ATOMIC_NUMBER + 1) -> np.ndarray:
    """(S, num_elements) float64 atom counts n_{s,Z}, column index = Z."""
    counts = np.zeros((len(graphs), num_elements))
    for s, graph in enumerate(graphs):
        counts[s] = torch.bincount(graph[K.ATOMIC_NUMBERS].cpu(), minlength=num_elements).double().numpy()
    return counts


def fit_linear_composition(
    graphs: Sequence[Data],
    *,
    ridge: float = 1e-6,
    prior: np.ndarray | torch.Tensor | None = None,
    num_elements: int = MAX_ATOMIC_NUMBER + 1,
) -> torch.Tensor:
    """Per-element energies ``w`` (num_elements,) float64 tensor, eV/atom, index = Z.

    Args:
        graphs: labelled graphs; those whose ``energy_mask`` is False are ignored.
        ridge: weight of the pull towards ``prior`` (dimensionless, relative to per-atom energies
            in eV^2); keeps collinear elements finite and unique.
        prior: (num_elements,) fallback weights for elements absent from ``graphs`` and the
            centre of the ridge; zeros if None.
        num_elements: length of the weight vector (95 covers Z = 0..94).

    Raises:
        ValueError: if no graph carries an energy label, or a label is NaN or inf.
    """
    labelled = [g for g in graphs if bool(g[K.mask_key(K.ENERGY)].all())]
    bad = [
        i
        for i, g in enumerate(graphs)
        if bool(g[K.mask_key(K.ENERGY)].all()) and not bool(torch.isfinite(g[K.ENERGY]).all())
    ]
    if bad:
        raise ValueError(
            f"cannot fit a composition model: non-finite energy label in structure(s) {bad[:10]} "
            f"of the {len(graphs)} given"
        )
    if not labelled:
        raise ValueError("cannot fit a composition model: no structure has an energy label")
    prior_np = np.zeros(num_elements) if prior is None else np.asarray(torch.as_tensor(prior).cpu(), dtype=np.float64)
    counts = element_counts(labelled, num_elements)
    atoms = counts.sum(axis=1, keepdims=True)
    fractions = counts / atoms
    energy_per_atom = np.array([float(g[K.ENERGY]) for g in labelled]) / atoms[:, 0]
    present = counts.sum(axis=0) > 0
    # Solve for the deviation from the prior on the present elements only.
    design = fractions[:, present]
    residual = energy_per_atom - fractions @ prior_np
    scale = np.sqrt(ridge)
    lhs = np.vstack([design, scale * np.eye(design.shape[1])])
    rhs = np.concatenate([residual, np.zeros(design.shape[1])])
    delta, *_ = np.linalg.lstsq(lhs, rhs, rcond=None)
    weights = prior_np.copy()
    weights[present] += delta
    return torch.from_numpy(weights)


def model_energies(model: nn.Module, graphs: Sequence[Data], batch_size: int = 16) -> torch.Tensor:
    """(S,) float64 energies (eV, total) that ``model`` predicts for ``graphs`` (each at its own
    fidelity), in evaluation mode and without gradients; the model's mode is restored."""
    was_training = model.training
    model.eval()
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    energies = []
    try:
        with torch.no_grad():
            for start in range(0, len(graphs), batch_size):
                batch = Batch.from_data_list(list(graphs[start : start + batch_size])).to(device)
                energies.append(model(batch)[K.ENERGY].double().cpu())
    finally:
        model.train(was_training)
    return torch.cat(energies) if energies else torch.zeros(0, dtype=torch.float64)


def with_energies(graphs: Sequence[Data], energies: torch.Tensor) -> list[Data]:
    """Shallow copies of ``graphs`` whose energy labels are ``energies`` (S,) eV (masks unchanged)."""
    result = []
    for graph, energy in zip(graphs, energies, strict=True):
        copy = graph.clone()
        copy[K.ENERGY] = energy.to(graph[K.ENERGY].dtype).reshape(graph[K.ENERGY].shape)
        result.append(copy)
    return result


def residuals(model: nn.Module, graphs: Sequence[Data]) -> list[Data]:
    """``graphs`` with energy labels E − E_model: what ``model``'s own prediction leaves unexplained."""
    energies = torch.stack([g[K.ENERGY].double().reshape(()) for g in graphs]) if graphs else torch.zeros(0)
    return with_energies(graphs, energies - model_energies(model, graphs))


def composition_path(model: nn.Module) -> str:
    """Module path of a plain backbone's composition model, from its fidelity spec; ValueError if none."""
    path = resolve_spec(model, None)[0].composition
    if path is None:
        raise ValueError(
            f"{type(model).__name__} has no composition model (per-element energies) named in its fidelity spec, so "
            "its energies cannot be referenced per element: add one (e.g. an nn.Embedding(100, 1) named by "
            "fidelity_spec['composition']), wrap it with mechanism C, or train with fit_composition: false"
        )
    return path


def fit_shared_composition(
    model: nn.Module, path: str, graphs: Sequence[Data], *, ridge: float = 1e-6, residual: bool = False
) -> None:
    """Least-squares fit of the composition module at ``path`` of ``model`` on all ``graphs``, in place;
    elements absent from ``graphs`` keep their current values. ``residual``: add the correction fitted
    to E − E_model instead (module docstring); ``model`` is the one whose prediction is the reference."""
    module = model.get_submodule(path)
    current = read_element_energies(module)
    if residual:
        fitted = current + fit_linear_composition(residuals(model, graphs), ridge=ridge)
    else:
        fitted = fit_linear_composition(graphs, ridge=ridge, prior=current)
    write_element_energies(module, fitted)


def fit_per_fidelity(
    table: FidelityComposition,
    graphs: Sequence[Data],
    *,
    ridge: float = 1e-6,
    reference: nn.Module | None = None,
    keep: Sequence[int] = (),
) -> None:
    """Mechanism C: one weight vector per fidelity from that fidelity's labelled graphs, pulled
    (``ridge``) towards the fit over all fidelities; an element absent from a fidelity's data takes
    the all-fidelity value, and one absent from all data keeps ``table.initial``.

    ``reference``: fit residually (module docstring) to E − E_reference, ``reference`` being the model
    that holds ``table``: each fidelity's row gains the correction fitted to its own graphs' residuals,
    pulled towards the correction fitted to all of them; a fidelity without labelled graphs keeps its
    row. ``keep``: fidelity indices whose rows are not fitted (an origin fidelity's pretrained weights).
    """
    count = table.element_energies.shape[0]
    fidelities = torch.cat([g[K.FIDELITY].reshape(-1) for g in graphs]).tolist()
    if any(f < 0 or f >= count for f in fidelities):
        raise ValueError(f"graph fidelity indices {sorted(set(fidelities))} out of range for {count} fidelities")
    if reference is not None:
        graphs = residuals(reference, graphs)
    current = table.element_energies.detach().double().cpu()
    pooled = fit_linear_composition(graphs, ridge=ridge, prior=None if reference is not None else table.initial)
    weights = []
    for f in range(count):
        own = [g for g, gf in zip(graphs, fidelities) if gf == f and bool(g[K.mask_key(K.ENERGY)].all())]
        if f in keep or (reference is not None and not own):
            weights.append(current[f])
            continue
        fitted = fit_linear_composition(own, ridge=ridge, prior=pooled) if own else pooled
        weights.append(current[f] + fitted if reference is not None else fitted)
    with torch.no_grad():
        table.element_energies.copy_(torch.stack(weights).to(table.element_energies))


def fit_composition(model: nn.Module, graphs: Sequence[Data], *, ridge: float = 1e-6, residual: bool = False) -> None:
    """Fit the composition model(s) of ``model`` to the energy labels of ``graphs``, in place;
    ``residual``: to the residual of the model's own prediction (module docstring).

    Models made of parts (``MultiFidelity``, ``DeltaModel``) or with their own composition layout
    (SevenNet's shift) fit through their own ``fit_composition(graphs, ridge=, residual=)``, which
    comes back here for each part; a plain backbone gets :func:`fit_shared_composition` on the module
    named by its fidelity spec.

    Raises:
        ValueError: no graph has an energy label, or the model has no composition model.
    """
    own = getattr(model, "fit_composition", None)
    if callable(own):
        own(graphs, ridge=ridge, residual=residual)
    else:
        fit_shared_composition(model, composition_path(model), graphs, ridge=ridge, residual=residual)
