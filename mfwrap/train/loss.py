"""Masked multi-target Huber loss on energy per atom, forces, stress and magmoms.

For target t with label mask m_t and Huber function h_δ (δ = ``delta``, in the target's units),

    L_t = Σ_k m_k a_k h_δ(p_k - y_k) / max(1, Σ_k m_k · c_t)        L = Σ_t w_t L_t

where k runs over structures (energy per atom in eV/atom, stress in GPa) or atoms (forces in eV/Å,
magmoms in μB) and c_t is the number of components per entry (1, 3, 9, 1), so L_t is the mean
over present labels only. a_k is the weight of the fidelity of entry k's structure
(``fidelity_weights``; 1 for every fidelity by default). A target with no label in the batch
contributes exactly 0. Masked entries are replaced by their label *before* the Huber function
(``torch.where``), so a NaN or inf prediction where no label exists (e.g. stress of a molecule)
reaches neither the loss nor its gradient. A target with labels somewhere in the (global) batch
but none in this process's slice is still computed (as exactly 0, connected to the prediction), so
that every output the model returned receives a gradient, as DistributedDataParallel requires.

Distributed training: each process holds a slice of the global batch. Passing the global label
counts (``counts``) and ``scale = world_size`` makes the per-process losses sum to the one-process
loss times world_size, which DistributedDataParallel's gradient *average* turns back into the
one-process gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F
from torch_geometric.data import Batch

from mfwrap.data import keys as K

# Loss terms in the order of the targets string ("efsm").
TARGET_LETTERS = {"e": K.ENERGY, "f": K.FORCES, "s": K.STRESS, "m": K.MAGMOMS}
_COMPONENTS = {K.ENERGY: 1, K.FORCES: 3, K.STRESS: 9, K.MAGMOMS: 1}


def parse_targets(targets: str) -> tuple[str, ...]:
    """Target keys from a string such as "efsm" (energy, forces, stress, magmoms)."""
    unknown = set(targets) - set(TARGET_LETTERS)
    if unknown or not targets:
        raise ValueError(f"targets must be a non-empty subset of 'efsm', got {targets!r}")
    return tuple(TARGET_LETTERS[letter] for letter in "efsm" if letter in targets)


@dataclass
class LossWeights:
    """Weights of the loss terms (the seed paper's 1 : 1 : 0.1 : 0.1)."""

    energy: float = 1.0
    forces: float = 1.0
    stress: float = 0.1
    magmoms: float = 0.1


def atoms_per_structure(batch: Batch) -> Tensor:
    """(B,) number of atoms of each structure in ``batch``."""
    return torch.bincount(batch.batch, minlength=batch[K.CELL].shape[0])


def per_atom_energy(energy: Tensor, batch: Batch) -> Tensor:
    """Total energies (B,) eV → eV/atom."""
    return energy / atoms_per_structure(batch).to(energy.dtype)


def label_counts(batch: Batch, targets: tuple[str, ...]) -> dict[str, Tensor]:
    """Number of present label entries per target (structures or atoms), as 0-d float tensors."""
    return {t: batch[K.mask_key(t)].sum().to(batch[K.POSITIONS].dtype) for t in targets}


def _masked_huber(pred: Tensor, label: Tensor, mask: Tensor, delta: float, weight: Tensor | None = None) -> Tensor:
    """Σ over present entries of the elementwise Huber loss (sum, not mean), each entry times ``weight``."""
    shape = (mask.shape[0], *([1] * (label.dim() - 1)))
    safe = torch.where(mask.view(shape).expand_as(label), pred, label)
    loss = F.huber_loss(safe, label, reduction="none", delta=delta)
    return (loss if weight is None else loss * weight.view(shape)).sum()


def targets_to_compute(batch: Batch, targets: tuple[str, ...]) -> dict[str, bool]:
    """Whether forces / stress need computing: asked for and labelled somewhere in the batch."""
    return {t: t in targets and bool(batch[K.mask_key(t)].any()) for t in (K.FORCES, K.STRESS)}


class MultiTargetLoss(torch.nn.Module):
    """Weighted sum of masked Huber losses; see the module docstring for the formula."""

    def __init__(
        self,
        targets: str = "efsm",
        weights: LossWeights | None = None,
        delta: float = 0.1,
        fidelity_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.targets = parse_targets(targets)
        self.weights = weights or LossWeights()
        self.delta = delta
        self.fidelity_weights = None if fidelity_weights is None else torch.tensor([float(w) for w in fidelity_weights])

    def forward(
        self,
        pred: dict[str, Tensor],
        batch: Batch,
        counts: dict[str, Tensor] | None = None,
        scale: float = 1.0,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Return (total loss, {target: term before weighting}).

        Args:
            pred: model outputs ("energy" total eV (B,), "forces", "stress", "magmoms").
            batch: the batch with labels and masks.
            counts: label counts to normalise by (global counts in distributed training);
                the batch's own counts if None.
            scale: multiplies every term (world size in distributed training).
        """
        counts = label_counts(batch, self.targets) if counts is None else counts
        total = batch[K.POSITIONS].new_zeros(())
        per_structure = None
        if self.fidelity_weights is not None:
            per_structure = self.fidelity_weights.to(total).index_select(0, batch[K.FIDELITY].reshape(-1))
        terms: dict[str, Tensor] = {}
        for target in self.targets:
            if float(counts[target]) == 0:
                terms[target] = total.new_zeros(())
                continue
            mask = batch[K.mask_key(target)]
            if target not in pred:
                if not bool(mask.any()):
                    terms[target] = total.new_zeros(())
                    continue
                raise KeyError(f"the batch has '{target}' labels but the model did not predict '{target}'")
            prediction, label = pred[target], batch[target]
            if target == K.ENERGY:
                prediction, label = per_atom_energy(prediction, batch), per_atom_energy(label, batch)
            weight = (
                None
                if per_structure is None
                else (per_structure.index_select(0, batch.batch) if target in K.PER_ATOM_TARGETS else per_structure)
            )
            summed = _masked_huber(prediction, label, mask, self.delta, weight)
            terms[target] = scale * summed / (counts[target] * _COMPONENTS[target])
            total = total + getattr(self.weights, target) * terms[target]
        return total, terms
