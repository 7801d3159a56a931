"""The optimiser side of a run: frozen parameters, Adam and the learning-rate schedule (cosine over
the run's steps, constant, or cut on a validation plateau), and the modules a training step calls
(only the outputs the loss reads, so DDP never waits for an unused gradient; DDP; the compiled step)."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch

from mfwrap.compile import compile_model
from mfwrap.train.config import TrainConfig
from mfwrap.train.distributed import DistributedContext


class SelectOutputs(nn.Module):
    """Passes on only the outputs the loss reads in this step (``keys``, the same in every process),
    so that DDP never waits for a gradient of a parameter that only feeds an unused output."""

    def __init__(self, model: nn.Module, keys: Sequence[str]) -> None:
        super().__init__()
        self.model, self.keys = model, tuple(keys)

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        out = self.model(batch)
        return {k: out[k] for k in self.keys if k in out}


def freeze(model: nn.Module, prefixes: Sequence[str]) -> None:
    """Stop the gradients of the parameters whose names start with any of ``prefixes``; a prefix
    that matches none is a ValueError."""
    for name, param in model.named_parameters():
        if any(name.startswith(prefix) for prefix in prefixes):
            param.requires_grad_(False)
    unmatched = [p for p in prefixes if not any(n.startswith(p) for n, _ in model.named_parameters())]
    if unmatched:
        raise ValueError(f"freeze prefixes {unmatched} match no parameter of {type(model).__name__}")


def make_optimiser(model: nn.Module, config: TrainConfig, steps_total: int) -> tuple[torch.optim.Optimizer, object]:
    """Adam over the trainable parameters and its schedule: per step cosine over ``steps_total``
    steps down to ``lr_min_fraction`` or constant, or (``plateau``) stepped once per epoch on the
    validation metric."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    floor = config.lr_min_fraction

    def cosine(step: int) -> float:
        if config.scheduler == "constant":
            return 1.0
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(step, steps_total) / steps_total))

    if config.scheduler == "plateau":  # stepped once per epoch on the validation metric
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="min",
            factor=config.plateau_factor,
            patience=config.plateau_patience - 1,
            threshold=0.0,
            min_lr=config.lr * floor,
            eps=0.0,
        )
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
    return optimizer, scheduler


def step_modules(
    selected: SelectOutputs, model: nn.Module, ctx: DistributedContext, device: torch.device, compile: Any
) -> tuple[nn.Module, nn.Module]:
    """(train_model, step_model): ``selected``, wrapped in DDP when distributed, and the module a
    training step calls: the same, or with ``compile`` (``train.compile``) ``model`` compiled
    (one process only: the derivatives inside the compiled graph pass DDP's gradient hooks by)."""
    if ctx.enabled:
        device_ids = [device.index] if device.type == "cuda" else None
        selected = nn.parallel.DistributedDataParallel(selected, device_ids=device_ids, find_unused_parameters=True)
    train_model: nn.Module = selected
    step_model: nn.Module = selected
    if compile:
        if ctx.enabled:
            raise ValueError(
                "train.compile takes its derivatives inside the compiled graph, past DistributedDataParallel's "
                "gradient hooks: use it with one process (or compile: false with several)"
            )
        backend = {} if compile is True else {"backend": compile}
        step_model = compile_model(model, **backend)
    return train_model, step_model
