"""``mfwrap.predict``: energies, forces, stress and magmoms of structures, as numpy."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn
from torch_geometric.data import Batch

from mfwrap.data import keys as K
from mfwrap.data.graph import structures_to_graphs
from mfwrap.fidelity import resolve_fidelity
from mfwrap.model_file import warn_unseen_elements
from mfwrap.physics import energy_and_derivatives


def _model_dtype(model: nn.Module) -> torch.dtype:
    param = next(model.parameters(), None)
    return param.dtype if param is not None else torch.get_default_dtype()


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def predict(
    model: nn.Module,
    structures: Any | Sequence[Any],
    fidelity: str | None = None,
    batch_size: int = 16,
    *,
    forces: bool = True,
    stress: bool = True,
) -> list[dict[str, Any]]:
    """Predict each structure at one fidelity.

    Args:
        model: a backbone or a :class:`mfwrap.MultiFidelity` (anything with ``graph_spec``).
        structures: ase.Atoms, pymatgen Structure/Molecule, or a list of them.
        fidelity: fidelity name; required when the model has more than one.
        batch_size: structures per forward pass.
        forces: whether to compute forces.
        stress: whether to compute stress (NaN for non-periodic structures).

    Warns (UserWarning, once per model and element) about elements the model's training data
    did not have, when its file records them (:func:`mfwrap.model_file.warn_unseen_elements`).

    Returns:
        one dict per structure: "energy" float (eV, total), "forces" (n, 3) eV/Å,
        "stress" (3, 3) GPa, and "magmoms" (n,) μB when the model predicts them.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    fidelity_index = resolve_fidelity(model, fidelity)
    dtype, device = _model_dtype(model), _model_device(model)
    graphs = structures_to_graphs(structures, model.graph_spec, fidelity=fidelity_index, dtype=dtype)
    warn_unseen_elements(model, [g[K.ATOMIC_NUMBERS] for g in graphs])
    was_training = model.training
    model.eval()
    results: list[dict[str, Any]] = []
    try:
        for start in range(0, len(graphs), batch_size):
            batch = Batch.from_data_list(graphs[start : start + batch_size]).to(device)
            with torch.no_grad():  # no parameter gradients; forces and stress still enter autograd
                out = energy_and_derivatives(model, batch, forces=forces, stress=stress)
            results.extend(_split(batch, out))
    finally:
        model.train(was_training)
    return results


def _split(batch: Batch, out: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    """Per-structure numpy dicts from batched outputs."""
    counts = torch.bincount(batch.batch, minlength=batch.num_graphs).tolist()
    per_atom = {key: torch.split(out[key].detach().cpu(), counts) for key in (K.FORCES, K.MAGMOMS) if key in out}
    energy = out[K.ENERGY].detach().cpu().numpy()
    stress = out[K.STRESS].detach().cpu().numpy() if K.STRESS in out else None
    results = []
    for b in range(batch.num_graphs):
        item: dict[str, Any] = {K.ENERGY: float(energy[b])}
        for key, chunks in per_atom.items():
            item[key] = chunks[b].numpy()
        if stress is not None:
            item[K.STRESS] = stress[b]
        results.append(item)
    return results
