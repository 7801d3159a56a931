"""Evaluating a model during training: MAE / RMSE per fidelity and target, sharded over processes."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch_geometric.data import Batch, Data

from mfwrap.data import keys as K
from mfwrap.physics import energy_and_derivatives
from mfwrap.train.distributed import DistributedContext
from mfwrap.train.loss import targets_to_compute
from mfwrap.train.metrics import ErrorAccumulator


def evaluate(
    model: nn.Module,
    graphs: Sequence[Data],
    *,
    fidelity_names: Sequence[str],
    targets: Sequence[str],
    ctx: DistributedContext,
    device: torch.device,
    batch_size: int,
) -> dict[str, dict[str, dict[str, float]]]:
    """MAE / RMSE per fidelity and target of ``model`` on ``graphs`` (see :class:`ErrorAccumulator`):
    each process takes every ``world_size``-th graph, in batches of ``batch_size``; the sums are
    added over processes. The model's training mode is restored."""
    accumulator = ErrorAccumulator(fidelity_names, targets)
    was_training = model.training
    model.eval()
    shard = list(graphs)[ctx.rank :: ctx.world_size]
    for start in range(0, len(shard), batch_size):
        batch = Batch.from_data_list(shard[start : start + batch_size]).to(device)
        need = targets_to_compute(batch, targets)
        pred = energy_and_derivatives(model, batch, forces=need[K.FORCES], stress=need[K.STRESS])
        accumulator.update(pred, batch)
    model.train(was_training)
    ctx.sum_(accumulator.sums)
    return accumulator.result()
