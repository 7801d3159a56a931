"""Least-squares fit of a linear composition model (per-element reference energies).

The composition model of CHGNet (and of the seed paper, eq. 10) is

    E_c = Σ_Z w_Z n_Z        (eV; n_Z the number of atoms of element Z in the structure)

equivalently ``E_c / N = Σ_Z w_Z x_Z`` with atom fractions ``x_Z = n_Z / N``. The weights ``w_Z``
(eV/atom) are fitted to per-atom energies, as chgnet's ``AtomRef.fit`` does:

    w = argmin_w  Σ_s (Σ_Z w_Z x_{s,Z} - E_s / N_s)^2  +  ridge · Σ_Z (w_Z - prior_Z)^2

Only elements present in the data are free; every other element keeps ``prior_Z`` (zeros unless
given). Collinear compositions (e.g. P and O always 1 : 4 in phosphates) make the plain problem
rank-deficient; the ridge term (and numpy's minimum-norm lstsq) gives a unique answer that
predicts the fitted energies equally well.

Used by the trainer for a plain backbone, and by ``MultiFidelity.fit_composition`` once per
fidelity (pass that fidelity's graphs, and e.g. the all-fidelity fit as ``prior`` so that an
element missing at one fidelity falls back to the shared value).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch_geometric.data import Data

from mfwrap.data import keys as K
from mfwrap.data.graph import MAX_ATOMIC_NUMBER


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
        ValueError: if no graph carries an energy label.
    """
    labelled = [g for g in graphs if bool(g[K.mask_key(K.ENERGY)].all())]
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
