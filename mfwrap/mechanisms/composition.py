"""C: the composition energy per fidelity, and reading / writing a backbone's per-element energies.

A backbone's own composition module is a per-element energy table in one of two layouts: an
``nn.Embedding(num, 1)`` indexed by Z (PyG's ``atomref``), or a module with a 1-D tensor
``element_energies`` whose entry k belongs to Z = k + 1 (native CHGNet's ``AtomRef``).
:func:`read_element_energies` / :func:`write_element_energies` move weights (eV/atom, index = Z)
in and out of either. The least-squares fit is :mod:`mfwrap.mechanisms.composition_fit`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from mfwrap.data import keys as K
from mfwrap.data.graph import MAX_ATOMIC_NUMBER, structure_index
from mfwrap.fidelity import ATOM, STRUCTURE, FidelityContext
from mfwrap.ops import scatter_sum_float64


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

    def __init__(
        self,
        context: FidelityContext,
        initial: torch.Tensor,
        row_kind: str = STRUCTURE,
        shape: tuple[int, ...] = (),
        dtype: torch.dtype | None = None,
        name: str = "",
    ) -> None:
        super().__init__()
        table = initial.to(dtype or torch.get_default_dtype()).unsqueeze(0).repeat(context.num_fidelities, 1)
        self.element_energies = nn.Parameter(table, requires_grad=False)
        self.register_buffer("initial", initial.double().clone())
        self.context = context
        self.row_kind = row_kind
        self.shape = tuple(shape)
        self.name = name

    def forward(self, *args, **kwargs) -> torch.Tensor:
        batch = self.context.batch
        numbers = batch[K.ATOMIC_NUMBERS]
        fidelity = self.context.rows(ATOM, numbers.shape[0], self.name)
        per_atom = self.element_energies[fidelity, numbers]
        if self.row_kind == ATOM:
            return per_atom.view(-1, *self.shape)
        total = scatter_sum_float64(per_atom, structure_index(batch), batch[K.CELL].shape[0])  # float64 accumulation
        return total.view(-1, *self.shape)

    def folded(self, fidelity: int, like: nn.Module) -> nn.Module:
        """A copy of ``like``, a composition module of the backbone's own layout (the module this one
        replaced, freshly built), holding row ``fidelity`` of the element energies (eV/atom): the plain
        backbone's composition model at that fidelity."""
        module = copy.deepcopy(like)
        write_element_energies(module, self.element_energies[fidelity].detach().double().cpu())
        return module

    def add_fidelity(self, like: int) -> None:
        """Append weights for a new fidelity, equal to those of fidelity ``like``."""
        table = self.element_energies.detach()
        grad = self.element_energies.requires_grad
        self.element_energies = nn.Parameter(torch.cat([table, table[like : like + 1]]), requires_grad=grad)

    def extra_repr(self) -> str:
        return f"fidelities={self.element_energies.shape[0]}, rows={self.row_kind}"
