"""What a training step says when it cannot go on: a compilation that failed, or a non-finite loss
or gradient (naming the batch's structures and where the value appeared)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch_geometric.data import Data

from mfwrap.train.checkpoint import describe_structures


def compile_failure(error: Exception, compile_option: Any) -> RuntimeError:
    """The error for a training step that ``torch.compile`` (``train.compile``) could not compile."""
    return RuntimeError(
        f"compiling the training step (train.compile: {compile_option!r}) failed under "
        f"torch {torch.__version__}: {str(error).splitlines()[0]}. The compiled path is tested on "
        f"torch 2.13 and fails inside torch.compile on 2.11 (seen on CPU and CUDA); "
        f"set train.compile: false to train with eager steps "
        f"(`mfwrap bench ... --eager` in the suite)"
    )


def nonfinite_error(
    model: nn.Module,
    graphs: Sequence[Data],
    local: Tensor,
    terms: dict[str, Tensor],
    loss: Tensor,
    fidelity_names: Sequence[str],
    step: int,
) -> FloatingPointError:
    """The error for a non-finite loss or gradient at optimiser step ``step`` (of any process):
    the loss term, the parameters' gradients or another process's batch, and this process's
    structures (``local`` indices into ``graphs``)."""
    bad_terms = [t for t, value in terms.items() if not bool(torch.isfinite(value.detach()))]
    bad_grads = [
        n for n, p in model.named_parameters() if p.grad is not None and not bool(torch.isfinite(p.grad).all())
    ]
    where = (
        f"loss term(s) {bad_terms}"
        if bad_terms
        else f"gradient of {bad_grads[:5]}"
        if bad_grads
        else "another process's batch"
        if bool(torch.isfinite(loss.detach()))
        else "the loss"
    )
    structures = describe_structures([graphs[i] for i in local.tolist()], local.tolist(), fidelity_names)
    return FloatingPointError(
        f"non-finite value in {where} at optimiser step {step}; this process's training "
        f"structures: {structures}. Check their labels, lower the learning rate or set grad_clip; "
        "train.nonfinite: skip skips such batches instead (counted in the log)"
    )
