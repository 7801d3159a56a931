"""What a trainer checkpoint holds besides the model: generator states, what the run trained on, and
guards on what is saved and resumed.

Checkpoints are :mod:`mfwrap.model_file` files (``best.pt``: the model; ``last.pt``: plus the
optimiser, scheduler, generator states, position in the data order, history, and the run's identity:
fingerprints of its training and validation data and its resolved configuration), read without
running code. So every value here is a tensor, number, string, list, tuple, dict or None.

Resuming compares the identity (:func:`resume_mismatches`): the data of each split by fingerprint,
the TrainConfig option by option except those in :data:`RESUME_FREE`, which do not change the
trajectory, the model's architecture and the rest of the run's configuration (the experiment's
model and method options) key by key. ``epochs`` is not free: the cosine schedule spans all epochs,
so a longer run is another run (a new ``output_dir``). A checkpoint written before fingerprints
existed is resumed without the data check.

:func:`save_last` writes a trainer's ``last.pt``; :func:`resume` checks and restores it.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch
from ase.symbols import Symbols
from torch import nn
from torch_geometric.data import Data

from mfwrap.data import keys as K
from mfwrap.model_file import read_payload
from mfwrap.train.config import TrainConfig

if TYPE_CHECKING:
    from mfwrap.train.trainer import Trainer


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

    def fidelity(graph: Data) -> str | int:
        index = int(graph[K.FIDELITY])
        return fidelity_names[index] if index < len(fidelity_names) else index

    return ", ".join(
        f"#{i} {Symbols(g[K.ATOMIC_NUMBERS].cpu().numpy()).get_chemical_formula()} (fidelity {fidelity(g)!r})"
        for i, g in zip(indices, graphs)
    )


# TrainConfig options that may differ between a run and its resumption: they change no weight.
RESUME_FREE = frozenset({"progress", "device", "output_dir", "eval_batch_size", "compile", "checkpoint_every"})
_FINGERPRINTED = (K.POSITIONS, K.ATOMIC_NUMBERS, K.CELL, K.FIDELITY) + tuple(
    key for target in (K.ENERGY, K.FORCES, K.STRESS, K.MAGMOMS) for key in (target, K.mask_key(target))
)


def data_fingerprint(graphs: Sequence[Data] | None) -> str:
    """SHA-256 (hex) of the graphs' positions, atomic numbers, cells, fidelities, labels and label
    masks, in order, with each graph's atom count: any change of a value, dtype or order changes it.
    Each key's tensors are concatenated and hashed as one buffer (no Python loop over atoms)."""
    graphs = list(graphs or ())
    digest = hashlib.sha256(str(len(graphs)).encode())
    if graphs:
        digest.update(torch.tensor([g.num_nodes for g in graphs], dtype=torch.int64).numpy().tobytes())
    for key in _FINGERPRINTED:
        values = [g[key] for g in graphs if key in g]
        digest.update(f"|{key}:{len(values)}".encode())
        if values:
            joined = torch.cat([torch.as_tensor(v).reshape(-1).detach().cpu() for v in values])
            digest.update(str(joined.dtype).encode())
            digest.update(joined.contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): value}


def config_changes(stored: Mapping[str, Any], current: Mapping[str, Any], free: frozenset[str] = frozenset()) -> dict:
    """{dotted key: (stored value, current value)} where the nested mappings differ; top-level keys in
    ``free`` aside."""
    old, new = _flatten(stored), _flatten(current)
    return {
        key: (old.get(key, "(absent)"), new.get(key, "(absent)"))
        for key in sorted(set(old) | set(new))
        if key.split(".")[0] not in free and old.get(key, "(absent)") != new.get(key, "(absent)")
    }


def resume_conflicts(stored: Mapping[str, Any], config: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """Options of ``config`` that differ from a checkpoint's stored TrainConfig dict, with (stored,
    current) values; options added since the file was written count as their defaults, and those
    in :data:`RESUME_FREE` are not compared."""
    return config_changes({**TrainConfig().to_dict(), **stored}, config.to_dict(), RESUME_FREE)


def resume_mismatches(stored: Mapping[str, Any], config: TrainConfig, current: Mapping[str, Any]) -> list[str]:
    """What differs between a checkpoint's run and the current one, one phrase each (empty: it may resume).

    ``stored`` is the checkpoint's contents; ``current`` holds the current run's "architecture",
    "run_config" and "data" ({split: :func:`data_fingerprint`}). An identity entry the checkpoint
    lacks (written before it was recorded, or a model without an architecture) is not compared."""
    found = []
    changes = resume_conflicts(stored["config"], config)
    if changes:
        found.append(f"the options {sorted(changes)} changed ({_describe(changes)})")
    for entry, what in (("architecture", "the model's architecture"), ("run_config", "the run's configuration")):
        if stored.get(entry) is not None:
            changes = config_changes(stored[entry], current.get(entry) or {})
            if changes:
                found.append(f"{what} changed ({_describe(changes)})")
    for split, fingerprint in (stored.get("data") or {}).items():
        if fingerprint != current["data"].get(split):
            found.append(f"the {split} data changed (positions, species, cells, fidelities, labels or masks)")
    return found


def _describe(changes: Mapping[str, tuple[Any, Any]], limit: int = 6) -> str:
    shown = [f"{key}: {old!r} → {new!r}" for key, (old, new) in list(changes.items())[:limit]]
    return "; ".join(shown) + (f"; and {len(changes) - limit} more" if len(changes) > limit else "")


def save_last(trainer: Trainer, epoch: int, step_in_epoch: int, global_step: int, num_train: int) -> None:
    """Write ``trainer``'s ``last.pt``: the model and everything :func:`resume` restores, at
    ``step_in_epoch`` steps into ``epoch`` (``global_step`` in all)."""
    ctx = trainer.ctx
    loss_sums = torch.zeros(ctx.world_size, dtype=torch.float64)  # each process's share of the epoch's loss
    loss_sums[ctx.rank] = trainer.epoch_loss_sum
    trainer.save_model(
        trainer.out_dir / "last.pt",
        {
            "config": trainer.config.to_dict(),
            "run_config": trainer.run_config,
            "data": trainer.data_fingerprints,
            "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.scheduler.state_dict(),
            "rng": rng_state(),
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "global_step": global_step,
            "num_train": num_train,
            "epoch_loss_sum": ctx.sum_(loss_sums).tolist(),
            "skipped_batches": trainer.skipped_batches,
            "history": trainer.history,
            "best": trainer.best,
            "wall": {
                "elapsed_s": trainer.elapsed(),
                "epochs": trainer.epoch_wall,
                "epoch_started_s": trainer._epoch_started,
            },
        },
    )
    ctx.barrier()


def resume(trainer: Trainer, num_train: int) -> tuple[int, int, int]:
    """Restore ``trainer`` from its ``last.pt`` after checking that the file belongs to this run
    (:func:`resume_mismatches`, and ``num_train`` training structures); returns (epoch,
    step_in_epoch, global_step) to continue from."""
    ctx = trainer.ctx
    path = trainer.out_dir / "last.pt"
    state = read_payload(path, map_location=trainer.device)
    current = {
        "architecture": trainer.architecture,
        "run_config": trainer.run_config,
        "data": trainer.data_fingerprints,
    }
    mismatches = resume_mismatches(state, trainer.config, current)
    if state["num_train"] != num_train:
        mismatches.append(f"the training set has {num_train} structures, not {state['num_train']}")
    try:
        if not mismatches:
            trainer.model.load_state_dict(state["state_dict"])
    except RuntimeError as error:  # a model without architecture to compare: name the first misfit
        detail = [line.strip() for line in str(error).splitlines() if line.strip()]
        mismatches.append(f"the model's weights do not fit it ({detail[1] if len(detail) > 1 else detail[0]})")
    if mismatches:
        raise ValueError(
            f"cannot resume {path}: it belongs to another run: {'; '.join(mismatches)}. Start a new output_dir, "
            "or retrain from scratch here (--overwrite on the command line, resume=False in Python)"
        )
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    trainer.history, trainer.best = state["history"], state["best"]
    loss_sums = state["epoch_loss_sum"] if isinstance(state["epoch_loss_sum"], list) else [state["epoch_loss_sum"]]
    same_world = len(loss_sums) == ctx.world_size
    trainer.epoch_loss_sum = loss_sums[ctx.rank] if same_world else sum(loss_sums) if ctx.is_main else 0.0
    trainer.skipped_batches = state.get("skipped_batches", 0)
    wall = state.get("wall", {})  # absent in files written before wall times were kept
    trainer._wall_before, trainer.epoch_wall = wall.get("elapsed_s", 0.0), wall.get("epochs", [])
    trainer._epoch_started = wall.get("epoch_started_s")
    return state["epoch"], state["step_in_epoch"], state["global_step"]
