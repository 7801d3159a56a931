"""Which structures a run trains on, and in what order: the seeded validation hold-out, each epoch's
batches and the per-fidelity shares of an epoch's draws (``TrainConfig.fidelity_sampling``)."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor
from torch_geometric.data import Data

from mfwrap.data import keys as K


def split_validation(graphs: Sequence[Data], val_fraction: float, seed: int) -> tuple[list[Data], list[Data]]:
    """Hold out ``val_fraction`` (at least one) of each fidelity's graphs, seeded; returns (train, val)."""
    fidelity = torch.tensor([int(g[K.FIDELITY]) for g in graphs])
    generator = torch.Generator().manual_seed(seed)
    held = torch.zeros(len(graphs), dtype=torch.bool)
    for f in fidelity.unique():
        members = (fidelity == f).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        count = int(round(val_fraction * len(members)))
        if val_fraction > 0 and len(members) > 1:
            count = max(count, 1)
        held[members[:count]] = True
    return [g for g, h in zip(graphs, held) if not h], [g for g, h in zip(graphs, held) if h]


def fidelity_sampled_order(
    fidelity: Tensor, generator: torch.Generator, fidelity_names: Sequence[str], sampling: Mapping[str, float]
) -> Tensor:
    """One epoch's structure indices under ``sampling`` (``TrainConfig.fidelity_sampling``):
    ``len(fidelity)`` draws, ``round(share_f * n)`` of fidelity f (largest remainders), shuffled."""
    n = len(fidelity)
    present = fidelity.unique().tolist()
    missing = [fidelity_names[f] for f in present if fidelity_names[f] not in sampling]
    if missing:
        raise ValueError(
            f"fidelity_sampling names no share for {missing}, which the training set has; "
            f"give a share to each of {[fidelity_names[f] for f in present]}"
        )
    shares = torch.tensor([float(sampling[fidelity_names[f]]) for f in present], dtype=torch.float64)
    exact = shares / shares.sum() * n
    counts = exact.floor().long()
    counts[torch.argsort(exact - counts, descending=True)[: n - int(counts.sum())]] += 1
    drawn = []
    for f, count in zip(present, counts.tolist()):
        members = (fidelity == f).nonzero().flatten()
        cycles = -(-count // len(members))  # fresh permutations until `count` are drawn
        permutations = [members[torch.randperm(len(members), generator=generator)] for _ in range(cycles)]
        drawn.append(torch.cat(permutations)[:count] if permutations else members[:0])
    order = torch.cat(drawn)
    return order[torch.randperm(n, generator=generator)]


def epoch_batches(
    n: int,
    fidelity: Tensor,
    epoch: int,
    *,
    seed: int,
    batch_size: int,
    fidelity_names: Sequence[str],
    sampling: Mapping[str, float],
    world_size: int | None = None,
) -> list[Tensor]:
    """Global batches (index tensors) of one epoch over ``n`` training structures (of fidelities
    ``fidelity``, read under ``sampling``), in the run's deterministic order (seeded with ``seed`` and
    ``epoch``). Distributed (``world_size``), a last batch too small to give each process a structure
    is dropped."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    if sampling:
        order = fidelity_sampled_order(fidelity, generator, fidelity_names, sampling)
    else:
        order = torch.randperm(n, generator=generator)
    batches = list(order.split(batch_size))
    if world_size is not None and len(batches[-1]) < world_size:
        batches.pop()  # a process would get no structure; this last partial batch is dropped
    return batches
