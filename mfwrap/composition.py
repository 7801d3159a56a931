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

Also here: mechanism C, :class:`FidelityComposition` (one weight vector per fidelity), and
:func:`read_element_energies` / :func:`write_element_energies` for a backbone's own composition
module (an ``nn.Embedding(num, 1)`` indexed by Z, or a module with ``element_energies`` from Z = 1).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch_geometric.data import Data

from mfwrap.data import keys as K
from mfwrap.data.graph import MAX_ATOMIC_NUMBER
from mfwrap.fidelity import ATOM, STRUCTURE, FidelityContext, structure_index


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


def read_element_energies(module: nn.Module, num_elements: int = MAX_ATOMIC_NUMBER + 1) -> torch.Tensor:
    """Per-element energies (num_elements,) float64, eV/atom, index = Z, of a backbone's composition module.

    Two layouts are understood: an ``nn.Embedding(num, 1)`` looked up with Z (PyG's ``atomref``),
    and a module with a 1-D tensor ``element_energies`` whose entry k belongs to Z = k + 1
    (native CHGNet's ``AtomRef``). Elements beyond the table get 0.
    """
    table, offset = _energy_table(module)
    weights = torch.zeros(num_elements, dtype=torch.float64)
    count = min(num_elements - offset, table.shape[0])
    weights[offset : offset + count] = table[:count].detach().double().cpu()
    return weights


def write_element_energies(module: nn.Module, weights: torch.Tensor) -> None:
    """Store per-element energies (index = Z, eV/atom) into a composition module, in place."""
    table, offset = _energy_table(module)
    count = min(weights.shape[0] - offset, table.shape[0])
    with torch.no_grad():
        table[:count] = weights[offset : offset + count].to(table)


def _energy_table(module: nn.Module) -> tuple[torch.Tensor, int]:
    """(1-D view of the module's energy table, Z of its first entry)."""
    if isinstance(module, nn.Embedding) and module.embedding_dim == 1:
        return module.weight[:, 0], 0
    table = getattr(module, "element_energies", None)
    if isinstance(table, torch.Tensor) and table.dim() == 1:
        return table, 1
    raise TypeError(
        f"cannot read per-element energies from a {type(module).__name__}: a composition module must be "
        "an nn.Embedding(num, 1) indexed by Z or have a 1-D tensor 'element_energies' starting at Z = 1"
    )


class FidelityComposition(nn.Module):
    r"""C: a composition energy per fidelity (paper Eq. 10, with element counts and total energy):

    .. math::  E_c^f(b) = \sum_{i \in b} w_{f_b, Z_i}   \quad (eV)

    ``element_energies`` (n_F, num_elements) eV/atom, index [f, Z], starts as ``initial`` (kept
    as a buffer) for every fidelity: the backbone's own composition weights, or zeros, so the wrapped model is
    unchanged at initialisation; :meth:`mfwrap.MultiFidelity.fit_composition` fits it by least
    squares, frozen like CHGNet's (requires_grad False; set it True to train it).

    It either replaces the backbone's composition module (then it is called in its place, its
    arguments are ignored, and it returns the same layout: per structure (B, ...) or per atom
    (n, ...) with ``shape`` as the trailing dimensions) or is added to the total energy.
    """

    def __init__(self, context: FidelityContext, initial: torch.Tensor, rows: str = STRUCTURE, shape: tuple[int, ...] = (),
                 dtype: torch.dtype | None = None, name: str = "") -> None:
        super().__init__()
        table = initial.to(dtype or torch.get_default_dtype()).unsqueeze(0).repeat(context.num_fidelities, 1)
        self.element_energies = nn.Parameter(table, requires_grad=False)
        self.register_buffer("initial", initial.double().clone())
        self.context = context
        self.rows = rows
        self.shape = tuple(shape)
        self.name = name

    def forward(self, *args, **kwargs) -> torch.Tensor:
        batch = self.context.batch
        numbers = batch[K.ATOMIC_NUMBERS]
        fidelity = self.context.rows(ATOM, numbers.shape[0], self.name)
        per_atom = self.element_energies[fidelity, numbers]
        if self.rows == ATOM:
            return per_atom.view(-1, *self.shape)
        total = per_atom.new_zeros(batch[K.CELL].shape[0]).index_add(0, structure_index(batch), per_atom)
        return total.view(-1, *self.shape)

    def add_fidelity(self, like: int) -> None:
        """Append weights for a new fidelity, equal to those of fidelity ``like``."""
        table = self.element_energies.detach()
        grad = self.element_energies.requires_grad
        self.element_energies = nn.Parameter(torch.cat([table, table[like : like + 1]]), requires_grad=grad)

    def extra_repr(self) -> str:
        return f"fidelities={self.element_energies.shape[0]}, rows={self.rows}"
