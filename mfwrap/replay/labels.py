"""Pseudo-labels: a frozen model's predictions as the labels of a fidelity."""

from __future__ import annotations

from typing import Any, Collection, Sequence

from torch import nn

from mfwrap.data import keys as K
from mfwrap.data.readers import LabelledStructure
from mfwrap.fidelity import DEFAULT_FIDELITY
from mfwrap.predict import predict
from mfwrap.replay.structures import as_atoms

TARGETS = (K.ENERGY, K.FORCES, K.STRESS, K.MAGMOMS)


def pseudo_label(
    model: nn.Module,
    structures: Sequence[Any],
    *,
    fidelity: str | None = None,
    name: str = "origin",
    batch_size: int = 8,
    targets: Collection[str] | None = None,
) -> list[LabelledStructure]:
    """Label ``structures`` with ``model``'s predictions at ``fidelity``, as records of fidelity ``name``.

    The labels are exactly :func:`mfwrap.predict.predict` (``model`` in eval mode, no gradient to its
    parameters): "energy" eV (total), "forces" eV/Å, "stress" GPa (periodic structures only) and
    "magmoms" μB where the model predicts them; ``targets`` keeps a subset (None: all predicted; a target
    the model does not predict is an error). Each record holds a bare copy of its structure whose ``info``
    keeps the structure's own keys plus "pseudo_label" = ``name`` and "labelled_at" = ``fidelity``.
    """
    wanted = set(TARGETS if targets is None else targets)
    if not wanted or wanted - set(TARGETS):
        raise ValueError(f"targets must be a non-empty subset of {list(TARGETS)}, got {sorted(wanted)}")
    frames = []
    for structure in structures:
        atoms = as_atoms(structure)
        info = structure.atoms.info if isinstance(structure, LabelledStructure) else structure.info
        atoms.info.update(info, pseudo_label=name, labelled_at=fidelity or DEFAULT_FIDELITY)
        frames.append(atoms)
    if not frames:
        return []
    predictions = predict(model, frames, fidelity, batch_size, forces=K.FORCES in wanted, stress=K.STRESS in wanted)
    if targets is not None and K.MAGMOMS in wanted and K.MAGMOMS not in predictions[0]:
        raise ValueError(f"targets include magmoms, but {type(model).__name__} does not predict them")
    records = []
    for index, (atoms, prediction) in enumerate(zip(frames, predictions)):
        labels = {key: value for key, value in prediction.items() if key in wanted}
        if not atoms.pbc.all():
            labels.pop(K.STRESS, None)  # NaN for a non-periodic structure: no label
        source = atoms.info.get("source", "structure")
        records.append(LabelledStructure(atoms, name, labels, name=f"replay {source}: {index}"))
    return records
