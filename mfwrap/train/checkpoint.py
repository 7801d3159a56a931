"""What a trainer checkpoint holds besides the model: generator states, and guards on what is saved.

Checkpoints are :mod:`mfwrap.model_file` files (``best.pt``: the model; ``last.pt``: plus the
optimiser, scheduler, generator states, position in the data order and history), read without
running code. So every value here is a tensor, number, string, list, tuple, dict or None.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from ase.symbols import Symbols
from torch import nn
from torch_geometric.data import Data

from mfwrap.data import keys as K


def rng_state() -> dict[str, Any]:
    """States of Python's, numpy's and torch's (CPU and CUDA) global generators, as plain values and tensors."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def require_finite(model: nn.Module, path: str | Path) -> None:
    """RuntimeError naming the first parameters or buffers with NaN or inf: such weights are never written."""
    bad = [
        name
        for name, value in model.state_dict().items()
        if value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]
    if bad:
        raise RuntimeError(f"refusing to write {path}: non-finite values in {bad[:5]}{' ...' if len(bad) > 5 else ''}")


def describe_structures(graphs: Sequence[Data], indices: Sequence[int], fidelity_names: Sequence[str]) -> str:
    """ "#index formula (fidelity name)" of each graph, for error messages."""

    def fidelity(g: Data) -> str | int:
        index = int(g[K.FIDELITY])
        return fidelity_names[index] if index < len(fidelity_names) else index

    return ", ".join(
        f"#{i} {Symbols(g[K.ATOMIC_NUMBERS].cpu().numpy()).get_chemical_formula()} (fidelity {fidelity(g)!r})"
        for i, g in zip(indices, graphs)
    )
