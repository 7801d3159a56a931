"""Distributed data parallel set-up from ``torchrun``'s environment variables.

``torchrun --nproc-per-node=N -m mfwrap.cli train CONFIG.yaml`` starts N processes with RANK,
WORLD_SIZE and LOCAL_RANK set; each joins one process group (NCCL on GPUs, gloo on CPU), takes a
contiguous slice of every global batch, and DistributedDataParallel averages the gradients.
Without those variables (or with WORLD_SIZE=1) everything runs in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls) -> "DistributedContext":
        """Join the process group described by torchrun's variables (initialising it once)."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        if not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend=backend)
        return cls(
            rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0"))
        )

    def device(self, requested: str) -> torch.device:
        """ "auto" → this process's GPU (cuda:LOCAL_RANK) if any, else CPU; otherwise as given."""
        if requested == "auto":
            return torch.device(f"cuda:{self.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
        return torch.device(requested)

    def sum_(self, tensor: Tensor) -> Tensor:
        """In-place sum over processes (identity in one process); CPU tensors work with NCCL too."""
        if not self.enabled:
            return tensor
        if dist.get_backend() == "nccl" and not tensor.is_cuda:
            staged = tensor.to(f"cuda:{self.local_rank}")
            dist.all_reduce(staged)
            tensor.copy_(staged.cpu())
        else:
            dist.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()
