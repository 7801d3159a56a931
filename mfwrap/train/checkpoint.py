"""Checkpoint files: atomic writes, random-number-generator state, clear errors on bad files.

A checkpoint is a ``torch.save``d dict with ``"format": "mfwrap-checkpoint"``. ``best.pt`` holds the
model (``model_state``, plus ``model_spec`` saying how to rebuild it, see mfwrap.train.baselines);
``last.pt`` additionally holds everything needed to resume exactly: optimiser, scheduler, RNG
states, position in the data order, history.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "mfwrap-checkpoint"


def save_atomic(payload: dict[str, Any], path: str | Path) -> None:
    """Write ``payload`` to ``path`` via a temporary file and ``os.replace``.

    A reader (or a resumed run after a kill) sees either the old file or the new one, never a
    half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"format": FORMAT, **payload}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_atomic`; a missing, corrupt or foreign file raises ValueError."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # torch raises several types for truncated / non-torch files
        raise ValueError(f"checkpoint {path} cannot be read ({type(error).__name__}: {error})") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not an mfwrap checkpoint")
    return payload


def rng_state() -> dict[str, Any]:
    """States of Python's, numpy's and torch's (CPU and CUDA) global generators."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
