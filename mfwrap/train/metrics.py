"""Error metrics per fidelity and per target: MAE and RMSE over present labels; the lines of the
training log that describe a stage's data and each epoch.

Units of the reported numbers: energy meV/atom (per structure, |ΔE|/N), forces meV/Å (per
Cartesian component), stress GPa (per tensor component), magmoms μB (per atom). Sums are kept as
float64 so that accumulation over many batches, and over processes, does not lose precision.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data

from mfwrap.data import keys as K
from mfwrap.train.loss import per_atom_energy

# Factor from mfwrap units (eV/atom, eV/Å, GPa, μB) to the reported ones.
REPORT_UNITS = {
    K.ENERGY: ("meV/atom", 1000.0),
    K.FORCES: ("meV/Å", 1000.0),
    K.STRESS: ("GPa", 1.0),
    K.MAGMOMS: ("μB", 1.0),
}


class ErrorAccumulator:
    """Running Σ|err|, Σ err² and counts, indexed [fidelity, target]."""

    def __init__(self, fidelity_names: Sequence[str], targets: Sequence[str]) -> None:
        self.fidelity_names = list(fidelity_names)
        self.targets = list(targets)
        # rows: fidelity; columns: target; last axis: (Σ|err|, Σ err², count)
        self.sums = torch.zeros(len(self.fidelity_names), len(self.targets), 3, dtype=torch.float64)

    def update(self, pred: dict[str, Tensor], batch: Batch) -> None:
        """Add the errors of one batch (predictions detached; NaN where unlabelled is fine)."""
        structure_fidelity = batch[K.FIDELITY].view(-1)
        atom_fidelity = structure_fidelity[batch.batch]
        for column, target in enumerate(self.targets):
            if target not in pred:
                continue
            prediction, label = pred[target].detach(), batch[target]
            if target == K.ENERGY:
                prediction, label = per_atom_energy(prediction, batch), per_atom_energy(label, batch)
            mask = batch[K.mask_key(target)]
            fidelity = atom_fidelity if target in K.PER_ATOM_TARGETS else structure_fidelity
            error = (prediction - label).double().reshape(label.shape[0], -1)
            error = torch.where(mask.view(-1, 1), error, torch.zeros_like(error))
            components = error.shape[1] * mask.double()
            stats = torch.stack([error.abs().sum(1), error.square().sum(1), components], dim=1)
            self.sums[:, column].index_add_(0, fidelity.cpu(), stats.cpu())

    def result(self) -> dict[str, dict[str, dict[str, float]]]:
        """{fidelity: {target: {"mae", "rmse", "count"}}} in report units; only targets with labels."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for row, name in enumerate(self.fidelity_names):
            for column, target in enumerate(self.targets):
                abs_sum, sq_sum, count = self.sums[row, column].tolist()
                if count == 0:
                    continue
                factor = REPORT_UNITS[target][1]
                out.setdefault(name, {})[target] = {
                    "mae": factor * abs_sum / count,
                    "rmse": factor * math.sqrt(sq_sum / count),
                    "count": count,
                }
        return out


def format_table(columns: dict[str, dict[str, dict[str, dict[str, float]]]], fidelity: str) -> str:
    """Side-by-side text table of MAE / RMSE at one fidelity for several runs.

    ``columns`` maps a run name to an :meth:`ErrorAccumulator.result`.
    """
    names = list(columns)
    width = max(12, *(len(n) + 7 for n in names))
    header = f"{'target':<10}{'unit':<10}" + "".join(f"{n + ' MAE':>{width}}{n + ' RMSE':>{width}}" for n in names)
    lines = [header, "-" * len(header)]
    for target, (unit, _) in REPORT_UNITS.items():
        row = f"{target:<10}{unit:<10}"
        present = False
        for name in names:
            stats = columns[name].get(fidelity, {}).get(target)
            present |= stats is not None
            row += (
                f"{stats['mae']:>{width}.4g}{stats['rmse']:>{width}.4g}" if stats else f"{'-':>{width}}{'-':>{width}}"
            )
        if present:
            lines.append(row)
    return "\n".join(lines)


def count_by_fidelity(graphs: Sequence[Data] | None, fidelity_names: Sequence[str]) -> dict[str, int]:
    """{fidelity name: number of structures} of ``graphs``, fidelities without any left out."""
    counts = [0] * len(fidelity_names)
    for graph in graphs or ():
        counts[int(graph[K.FIDELITY])] += 1
    return {name: n for name, n in zip(fidelity_names, counts) if n}


def describe_data(
    train: Sequence[Data], val: Sequence[Data] | None, fidelity_names: Sequence[str], held_out: float | None
) -> dict[str, Any]:
    """What a training stage trains and validates on, as metrics.json records it: structures per
    fidelity of ``train`` and ``val``, and where the validation frames come from (``held_out``: the
    ``val_fraction`` that :meth:`~mfwrap.train.Trainer.split_validation` held out of the training
    frames; None = the frames given): ``val_source`` "given", "held out" (with ``val_fraction``) or "none"."""
    record = {"train": count_by_fidelity(train, fidelity_names), "val": count_by_fidelity(val, fidelity_names)}
    if not val:
        return {**record, "val_source": "none"}
    if held_out is None:
        return {**record, "val_source": "given"}
    return {**record, "val_source": "held out", "val_fraction": held_out}


def _counts(counts: dict[str, int]) -> str:
    return f"{sum(counts.values())} ({', '.join(f'{name} {n}' for name, n in counts.items())})"


def stage_line(stage: str, data: dict[str, Any], config: Any, target: str, steps_per_epoch: int) -> str:
    """The training log's line on a stage: its data (:func:`describe_data`), steps and best-epoch rule."""
    val = data["val"]
    if not val:
        validation = "no validation frames: the last epoch is kept"
    elif data["val_source"] == "given":
        validation = f"validates on the {_counts(val)} given"
    else:
        fraction = data["val_fraction"]
        validation = f"validates on {_counts(val)} held out of its training frames (val_fraction {fraction:g})"
    chosen = f", best epoch on {target!r} by {config.best_metric}" if val else ""
    return (
        f"{stage}: trains on {_counts(data['train'])} structures, {config.epochs} epochs of {steps_per_epoch} "
        f"steps (batch {config.batch_size}, lr {config.lr:g}); {validation}{chosen}"
    )


def epoch_line(
    stage: str,
    epochs: int,
    loss: float,
    at_target: tuple[str, dict[str, dict[str, float]] | None],
    lr: float,
    wall: dict[str, float],
) -> str:
    """The training log's line on one epoch: mean training loss, validation MAE of each target at the
    target fidelity (``at_target``: its name and its :meth:`ErrorAccumulator.result` entry, None
    without validation), the next step's lr, and ``wall`` ({"epoch", "wall_s", "elapsed_s"})."""
    fidelity, metrics = at_target
    if metrics:
        errors = ", ".join(f"{t} {s['mae']:.4g} {REPORT_UNITS[t][0]}" for t, s in metrics.items())
        validation = f"val MAE at {fidelity!r}: {errors}"
    else:
        validation = "no validation"
    return (
        f"{stage} epoch {wall['epoch'] + 1}/{epochs}: loss {loss:.4g}; {validation}; lr {lr:.3g}; "
        f"{wall['wall_s']:.1f} s ({wall['elapsed_s']:.1f} s in all)"
    )


def best_metric_value(metrics: dict[str, dict[str, dict[str, float]]], target_fidelity: str, config: Any) -> float:
    """The ``config.best_metric`` value (lower is better) at ``target_fidelity`` of validation
    ``metrics``: one target's "mae" or "rmse", or "weighted_mae" (the MAEs in report units,
    weighted by ``config.loss_weights``)."""
    at_target = metrics.get(target_fidelity)
    if not at_target:
        raise ValueError(f"no validation labels at the target fidelity {target_fidelity!r}")
    if config.best_metric == "weighted_mae":
        return sum(getattr(config.loss_weights, t) * at_target[t]["mae"] / REPORT_UNITS[t][1] for t in at_target)
    target, _, kind = config.best_metric.rpartition("_")
    if target not in at_target or kind not in ("mae", "rmse"):
        raise ValueError(f"best_metric {config.best_metric!r} not available; validation has {sorted(at_target)}")
    return at_target[target][kind]
