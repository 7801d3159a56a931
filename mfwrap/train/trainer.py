"""Training loop: composition fit, Adam + a cosine (or constant, or plateau) schedule, masked Huber
loss with double backward, validation every epoch, best-on-validation and resumable checkpoints, metric logs, DDP.

Reproducibility: the data order of epoch e is ``randperm`` from a generator seeded with
``(seed, e)``; ``last.pt`` stores model, optimiser, scheduler, RNG states, the epoch and the number
of steps done in it. ``fit(resume=True)`` skips those steps and continues, so a run killed after
any checkpoint ends with the same weights as an uninterrupted one.

Log (:func:`say`, stderr): what the run trains and validates on, then one line per epoch where no
progress bar is shown.

Distributed: each global batch of ``batch_size`` structures is split into ``world_size``
contiguous slices; losses are normalised by the *global* label counts (see mfwrap.train.loss),
so N processes follow the one-process trajectory up to floating-point summation order.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch, Data
from tqdm.auto import tqdm

from mfwrap.compile import compile_model, inductor_cache_dir
from mfwrap.data import keys as K
from mfwrap.fidelity import fidelity_names_of
from mfwrap.files import cannot_write, check_writable, write_text
from mfwrap.mechanisms.composition_fit import fit_composition
from mfwrap.model_file import describe_model, read_payload, record_elements, save_model
from mfwrap.physics import energy_and_derivatives
from mfwrap.train.checkpoint import (
    data_fingerprint,
    describe_structures,
    require_finite,
    resume_mismatches,
    rng_state,
    set_rng_state,
)
from mfwrap.train.config import TrainConfig
from mfwrap.train.distributed import DistributedContext
from mfwrap.train.loss import MultiTargetLoss, label_counts, targets_to_compute
from mfwrap.train.metrics import REPORT_UNITS, ErrorAccumulator, describe_data, epoch_line, stage_line

log = logging.getLogger(__name__)


# The files a training run writes into its output_dir; a directory with any of them holds a run.
RUN_FILES = ("best.pt", "last.pt", "metrics.json", "metrics.csv")


def claim_output_dir(
    directory: str | Path, *, resume: bool = False, overwrite: bool = False, check_only: bool = False
) -> None:
    """Make ``directory`` ready for a training run, before any training.

    A directory holding a run (any of :data:`RUN_FILES`) is continued with ``resume``, or with
    ``overwrite`` rid of those files first (deleted; no other file in it is touched); with neither,
    ValueError naming both. Then the directory is created and proved writable
    (:func:`mfwrap.files.check_writable`): an unwritable place fails now, not after an epoch.
    ``check_only``: delete nothing yet (a check before reading the data, which may still fail).
    """
    if resume and overwrite:
        raise ValueError(f"{directory}: resume and overwrite exclude each other: continue the run or replace it")
    directory = Path(directory)
    try:
        present = [name for name in RUN_FILES if (directory / name).is_file()]
        if present and not (resume or overwrite):
            raise ValueError(
                f"{directory} holds a training run ({', '.join(present)}): continue it with --resume (resume=True), "
                "replace it with --overwrite (overwrite=True: deletes those files), or choose another output_dir"
            )
        for name in present if overwrite and not check_only else ():
            (directory / name).unlink(missing_ok=True)
    except OSError as error:
        raise cannot_write(directory, error) from error
    check_writable(directory)


def say(line: str, config: TrainConfig) -> None:
    """One line of the training log: on stderr, flushed, from the main process (``RANK`` 0), unless
    ``config.progress`` is off. What a stage trains and validates on, and one line per epoch where no
    progress bar is shown (stderr not a terminal: batch jobs, CI, ``nohup``)."""
    if config.progress and os.environ.get("RANK", "0") == "0":
        print(line, file=sys.stderr, flush=True)


class _SelectOutputs(nn.Module):
    """Passes on only the outputs the loss reads in this step (``keys``, the same in every process),
    so that DDP never waits for a gradient of a parameter that only feeds an unused output."""

    def __init__(self, model: nn.Module, keys: Sequence[str]) -> None:
        super().__init__()
        self.model, self.keys = model, tuple(keys)

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        out = self.model(batch)
        return {k: out[k] for k in self.keys if k in out}


class Trainer:
    """Train ``model`` (a backbone or a multi-fidelity wrapper) on labelled graphs.

    Args:
        model: module with ``graph_spec`` whose forward returns "energy" (B,) eV (+ "magmoms").
        config: hyperparameters.
        fidelity_names: names of the fidelity indices in the graphs (default: the model's, or
            ["default"] for a plain backbone).
        architecture: how to rebuild the model (stored in checkpoints so that ``mfwrap.load``,
            ``mfwrap evaluate`` and ``predict`` can load them); default
            :func:`mfwrap.model_file.describe_model`, or None when the model cannot be described.
        run_config: the rest of the configuration this training belongs to (e.g. the experiment's
            model and method options), JSON-like; stored in ``last.pt`` and compared on resuming
            (:func:`mfwrap.train.checkpoint.resume_mismatches`).
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        *,
        fidelity_names: Sequence[str] | None = None,
        architecture: dict[str, Any] | None = None,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.run_config = run_config
        self.ctx = DistributedContext.from_env()
        self.device = self.ctx.device(config.device)
        self.model = model.to(self.device)
        self.fidelity_names = list(fidelity_names or fidelity_names_of(model))
        self.architecture = architecture if architecture is not None else _describe_or_none(model)
        for option in ("fidelity_loss_weights", "fidelity_sampling"):
            unknown = sorted(set(getattr(config, option)) - set(self.fidelity_names))
            if unknown:
                raise ValueError(f"{option} name {unknown}, not among the fidelities {self.fidelity_names}")
        weights = [float(config.fidelity_loss_weights.get(name, 1.0)) for name in self.fidelity_names]
        self.criterion = MultiTargetLoss(
            config.targets,
            config.loss_weights,
            config.huber_delta,
            fidelity_weights=weights if config.fidelity_loss_weights else None,
        )
        self.targets = self.criterion.targets
        self.target_fidelity = config.target_fidelity or self.fidelity_names[-1]
        if self.target_fidelity not in self.fidelity_names:
            raise ValueError(f"target_fidelity {self.target_fidelity!r} not among {self.fidelity_names}")
        self.out_dir = Path(config.output_dir)
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"value": math.inf, "epoch": -1}
        self.skipped_batches = 0
        self.steps_done = 0
        self._train_fidelity = torch.zeros(0, dtype=torch.long)  # fidelity index per training structure (fit sets it)
        self.compile_seconds: float | None = None
        self.show_progress = config.progress and self.ctx.is_main and sys.stderr.isatty() and not os.environ.get("CI")
        self.data: dict[str, Any] = {}  # what fit trains and validates on (metrics.describe_data)
        self.epoch_wall: list[dict[str, float]] = []  # per epoch: its wall seconds and the run's elapsed ones
        self._wall_before = 0.0  # seconds this run spent in earlier fit calls (from last.pt)
        self._session_start = time.perf_counter()
        self._epoch_started: float | None = None  # elapsed() when the current epoch began

    def say(self, line: str) -> None:
        """One line of the training log on stderr (main process, ``config.progress``)."""
        say(line, self.config)

    def elapsed(self) -> float:
        """Wall seconds this run has spent in :meth:`fit`, earlier (resumed) calls included."""
        return self._wall_before + time.perf_counter() - self._session_start

    # ----------------------------------------------------------------- set-up
    def split_validation(self, graphs: Sequence[Data]) -> tuple[list[Data], list[Data]]:
        """Hold out ``val_fraction`` (at least one) of each fidelity's graphs, seeded; returns (train, val)."""
        fidelity = torch.tensor([int(g[K.FIDELITY]) for g in graphs])
        generator = torch.Generator().manual_seed(self.config.seed)
        held = torch.zeros(len(graphs), dtype=torch.bool)
        for f in fidelity.unique():
            members = (fidelity == f).nonzero().flatten()
            members = members[torch.randperm(len(members), generator=generator)]
            count = int(round(self.config.val_fraction * len(members)))
            if self.config.val_fraction > 0 and len(members) > 1:
                count = max(count, 1)
            held[members[:count]] = True
        return [g for g, h in zip(graphs, held) if not h], [g for g, h in zip(graphs, held) if h]

    def _batches_of_epoch(self, n: int, epoch: int) -> list[Tensor]:
        """Global batches (index tensors) of one epoch, in this run's deterministic order."""
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        if self.config.fidelity_sampling:
            order = self._fidelity_sampled_order(self._train_fidelity, generator)
        else:
            order = torch.randperm(n, generator=generator)
        batches = list(order.split(self.config.batch_size))
        if self.ctx.enabled and len(batches[-1]) < self.ctx.world_size:
            batches.pop()  # a process would get no structure; this last partial batch is dropped
        return batches

    def _fidelity_sampled_order(self, fidelity: Tensor, generator: torch.Generator) -> Tensor:
        """One epoch's structure indices under ``config.fidelity_sampling`` (see TrainConfig):
        ``len(fidelity)`` draws, ``round(share_f * n)`` of fidelity f (largest remainders), shuffled."""
        n = len(fidelity)
        present = fidelity.unique().tolist()
        missing = [
            self.fidelity_names[f] for f in present if self.fidelity_names[f] not in self.config.fidelity_sampling
        ]
        if missing:
            raise ValueError(
                f"fidelity_sampling names no share for {missing}, which the training set has; "
                f"give a share to each of {[self.fidelity_names[f] for f in present]}"
            )
        shares = torch.tensor(
            [float(self.config.fidelity_sampling[self.fidelity_names[f]]) for f in present], dtype=torch.float64
        )
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

    def setup_optimiser(self, steps_total: int) -> None:
        """Freeze ``config.freeze``; create Adam, the learning-rate schedule (cosine over
        ``steps_total`` steps, constant, or cut on a validation plateau) and (distributed) the DDP
        wrapper. :meth:`fit` calls it; call it yourself only to drive
        :meth:`train_step` directly (e.g. in a benchmark)."""
        for name, param in self.model.named_parameters():
            if any(name.startswith(prefix) for prefix in self.config.freeze):
                param.requires_grad_(False)
        unmatched = [
            p for p in self.config.freeze if not any(n.startswith(p) for n, _ in self.model.named_parameters())
        ]
        if unmatched:
            raise ValueError(f"freeze prefixes {unmatched} match no parameter of {type(self.model).__name__}")
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=self.config.lr, weight_decay=self.config.weight_decay)
        floor = self.config.lr_min_fraction

        def cosine(step: int) -> float:
            if self.config.scheduler == "constant":
                return 1.0
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(step, steps_total) / steps_total))

        if self.config.scheduler == "plateau":  # stepped once per epoch on the validation metric
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer,
                mode="min",
                factor=self.config.plateau_factor,
                patience=self.config.plateau_patience - 1,
                threshold=0.0,
                min_lr=self.config.lr * floor,
                eps=0.0,
            )
        else:
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, cosine)
        selected = self.selected = _SelectOutputs(self.model, (K.ENERGY,))
        if self.ctx.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            selected = nn.parallel.DistributedDataParallel(selected, device_ids=device_ids, find_unused_parameters=True)
        self.train_model = selected
        self.step_model: nn.Module = selected
        if self.config.compile:
            if self.ctx.enabled:
                raise ValueError(
                    "train.compile takes its derivatives inside the compiled graph, past DistributedDataParallel's "
                    "gradient hooks: use it with one process (or compile: false with several)"
                )
            backend = {} if self.config.compile is True else {"backend": self.config.compile}
            self.step_model = compile_model(self.model, **backend)

    # ----------------------------------------------------------------- steps
    def train_step(self, graphs: Sequence[Data], indices: Tensor) -> Tensor:
        """One optimiser step on the global batch ``indices``; returns this process's loss share."""
        local = torch.tensor_split(indices, self.ctx.world_size)[self.ctx.rank]
        batch = Batch.from_data_list([graphs[i] for i in local.tolist()]).to(self.device)
        counts = label_counts(batch, self.targets)
        if self.ctx.enabled:
            stacked = self.ctx.sum_(torch.stack(list(counts.values())))
            counts = dict(zip(counts, stacked))
        need = targets_to_compute(batch, self.targets)
        self.selected.keys = (K.ENERGY,) + (
            (K.MAGMOMS,) if K.MAGMOMS in counts and float(counts[K.MAGMOMS]) > 0 else ()
        )
        started = time.perf_counter() if self.compile_seconds is None and self.config.compile else None
        try:
            pred = energy_and_derivatives(
                self.step_model, batch, forces=need[K.FORCES], stress=need[K.STRESS], create_graph=True
            )
        except torch._dynamo.exc.TorchDynamoException as error:  # compilation, not the data: say what to do
            raise RuntimeError(
                f"compiling the training step (train.compile: {self.config.compile!r}) failed under "
                f"torch {torch.__version__}: {str(error).splitlines()[0]}. The compiled path is tested on "
                f"torch 2.13 and fails inside torch.compile on 2.11 (seen on CPU and CUDA); "
                f"set train.compile: false to train with eager steps "
                f"(`mfwrap bench ... --eager` in the suite)"
            ) from error
        loss, terms = self.criterion(pred, batch, counts, scale=float(self.ctx.world_size))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trained = [p for p in self.model.parameters() if p.grad is not None]
        norm = nn.utils.clip_grad_norm_(trained, self.config.grad_clip if self.config.grad_clip > 0 else math.inf)
        finite = torch.isfinite(loss.detach()) & torch.isfinite(norm)
        if float(self.ctx.sum_((~finite).to(torch.float64))) > 0:  # one host sync per step
            self._non_finite(graphs, local, terms, loss)
            self.optimizer.zero_grad(set_to_none=True)
            self._step_schedule()
            return loss.new_zeros(())
        self.optimizer.step()
        self._step_schedule()
        if started is not None:  # the first compiled step: compilation + one step
            self.compile_seconds = time.perf_counter() - started
            log.info(
                "compiled the training step in %.1f s (inductor's cache: %s)",
                self.compile_seconds,
                inductor_cache_dir(),
            )
        return loss.detach()

    def _step_schedule(self) -> None:
        """Advance a per-step schedule ("cos", "constant"); "plateau" moves once per epoch instead."""
        if self.config.scheduler != "plateau":
            self.scheduler.step()

    def _non_finite(self, graphs: Sequence[Data], local: Tensor, terms: dict[str, Tensor], loss: Tensor) -> None:
        """A non-finite loss or gradient in this step (of any process): an error naming the batch's
        structures and the term, or with ``nonfinite: skip`` a skipped step, counted."""
        if self.config.nonfinite == "skip":
            self.skipped_batches += 1
            return
        bad_terms = [t for t, value in terms.items() if not bool(torch.isfinite(value.detach()))]
        bad_grads = [
            n for n, p in self.model.named_parameters() if p.grad is not None and not bool(torch.isfinite(p.grad).all())
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
        structures = describe_structures([graphs[i] for i in local.tolist()], local.tolist(), self.fidelity_names)
        raise FloatingPointError(
            f"non-finite value in {where} at optimiser step {self.scheduler.last_epoch + 1}; this process's training "
            f"structures: {structures}. Check their labels, lower the learning rate or set grad_clip; "
            "train.nonfinite: skip skips such batches instead (counted in the log)"
        )

    def evaluate(self, graphs: Sequence[Data]) -> dict[str, dict[str, dict[str, float]]]:
        """MAE / RMSE per fidelity and target on ``graphs`` (see :class:`ErrorAccumulator`)."""
        accumulator = ErrorAccumulator(self.fidelity_names, self.targets)
        was_training = self.model.training
        self.model.eval()
        shard = list(graphs)[self.ctx.rank :: self.ctx.world_size]
        size = self.config.eval_batch_size
        for start in range(0, len(shard), size):
            batch = Batch.from_data_list(shard[start : start + size]).to(self.device)
            need = targets_to_compute(batch, self.targets)
            pred = energy_and_derivatives(self.model, batch, forces=need[K.FORCES], stress=need[K.STRESS])
            accumulator.update(pred, batch)
        self.model.train(was_training)
        self.ctx.sum_(accumulator.sums)
        return accumulator.result()

    def score(self, metrics: dict[str, dict[str, dict[str, float]]]) -> float:
        """The ``best_metric`` value (lower is better) at the target fidelity."""
        at_target = metrics.get(self.target_fidelity)
        if not at_target:
            raise ValueError(f"no validation labels at the target fidelity {self.target_fidelity!r}")
        if self.config.best_metric == "weighted_mae":
            return sum(
                getattr(self.config.loss_weights, t) * at_target[t]["mae"] / REPORT_UNITS[t][1] for t in at_target
            )
        target, _, kind = self.config.best_metric.rpartition("_")
        if target not in at_target or kind not in ("mae", "rmse"):
            raise ValueError(
                f"best_metric {self.config.best_metric!r} not available; validation has {sorted(at_target)}"
            )
        return at_target[target][kind]

    # ----------------------------------------------------------------- checkpoints and logs
    def save_model(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write the model (an :mod:`mfwrap.model_file` file: architecture, weights, fidelity names,
        targets) and ``extra`` to ``path``; refuses non-finite weights."""
        if self.ctx.is_main:
            require_finite(self.model, path)
            save_model(
                self.model,
                path,
                architecture=self.architecture,
                fidelity_names=self.fidelity_names,
                targets=self.config.targets,
                target_fidelity=self.target_fidelity,
                **(extra or {}),
            )

    def _save_last(self, epoch: int, step_in_epoch: int, global_step: int, num_train: int) -> None:
        loss_sums = torch.zeros(self.ctx.world_size, dtype=torch.float64)  # each process's share of the epoch's loss
        loss_sums[self.ctx.rank] = self.epoch_loss_sum
        self.save_model(
            self.out_dir / "last.pt",
            {
                "config": self.config.to_dict(),
                "run_config": self.run_config,
                "data": self.data_fingerprints,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": rng_state(),
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "global_step": global_step,
                "num_train": num_train,
                "epoch_loss_sum": self.ctx.sum_(loss_sums).tolist(),
                "skipped_batches": self.skipped_batches,
                "history": self.history,
                "best": self.best,
                "wall": {
                    "elapsed_s": self.elapsed(),
                    "epochs": self.epoch_wall,
                    "epoch_started_s": self._epoch_started,
                },
            },
        )
        self.ctx.barrier()

    def _resume(self, num_train: int) -> tuple[int, int, int]:
        path = self.out_dir / "last.pt"
        state = read_payload(path, map_location=self.device)
        current = {"architecture": self.architecture, "run_config": self.run_config, "data": self.data_fingerprints}
        mismatches = resume_mismatches(state, self.config, current)
        if state["num_train"] != num_train:
            mismatches.append(f"the training set has {num_train} structures, not {state['num_train']}")
        try:
            if not mismatches:
                self.model.load_state_dict(state["state_dict"])
        except RuntimeError as error:  # a model without architecture to compare: name the first misfit
            detail = [line.strip() for line in str(error).splitlines() if line.strip()]
            mismatches.append(f"the model's weights do not fit it ({detail[1] if len(detail) > 1 else detail[0]})")
        if mismatches:
            raise ValueError(
                f"cannot resume {path}: it belongs to another run: {'; '.join(mismatches)}. Start a new output_dir, "
                "or retrain from scratch here (--overwrite on the command line, resume=False in Python)"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.history, self.best = state["history"], state["best"]
        loss_sums = state["epoch_loss_sum"] if isinstance(state["epoch_loss_sum"], list) else [state["epoch_loss_sum"]]
        same_world = len(loss_sums) == self.ctx.world_size
        self.epoch_loss_sum = loss_sums[self.ctx.rank] if same_world else sum(loss_sums) if self.ctx.is_main else 0.0
        self.skipped_batches = state.get("skipped_batches", 0)
        wall = state.get("wall", {})  # absent in files written before wall times were kept
        self._wall_before, self.epoch_wall = wall.get("elapsed_s", 0.0), wall.get("epochs", [])
        self._epoch_started = wall.get("epoch_started_s")
        return state["epoch"], state["step_in_epoch"], state["global_step"]

    def _log(self, epoch: int, split: str, metrics: dict[str, dict[str, dict[str, float]]], **extra: float) -> None:
        for fidelity, per_target in metrics.items():
            for target, stats in per_target.items():
                self.history.append(
                    {
                        "epoch": epoch,
                        "split": split,
                        "fidelity": fidelity,
                        "target": target,
                        "unit": REPORT_UNITS[target][0],
                        **stats,
                    }
                )
        for name, value in extra.items():
            self.history.append(
                {
                    "epoch": epoch,
                    "split": split,
                    "fidelity": "all",
                    "target": name,
                    "unit": "",
                    "mae": value,
                    "rmse": math.nan,
                    "count": math.nan,
                }
            )

    def _write_logs(self, summary: dict[str, Any] | None = None) -> None:
        if not self.ctx.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        columns = ["epoch", "split", "fidelity", "target", "unit", "mae", "rmse", "count"]
        wall = {row["epoch"]: row for row in self.epoch_wall}  # the epoch's wall seconds, the run's elapsed ones

        def timing(row: dict[str, Any]) -> list[str]:
            epoch = wall.get(row["epoch"]) if row["split"] != "test" else None
            return [str(epoch["wall_s"]), str(epoch["elapsed_s"])] if epoch else ["", ""]

        lines = [",".join(columns + ["wall_s", "elapsed_s"])]
        lines += [",".join([str(row[c]) for c in columns] + timing(row)) for row in self.history]
        write_text(self.out_dir / "metrics.csv", "\n".join(lines) + "\n")
        record = {
            "config": self.config.to_dict(),
            "fidelity_names": self.fidelity_names,
            "data": self.data,
            "best": self.best,
            "history": self.history,
            "epoch_wall": self.epoch_wall,
            "wall_s": self.elapsed(),
            **(summary or {}),
        }
        write_text(self.out_dir / "metrics.json", json.dumps(record, indent=1, default=float))

    # ----------------------------------------------------------------- main loop
    def fit(
        self,
        train: Sequence[Data],
        val: Sequence[Data] | None = None,
        test: Sequence[Data] | None = None,
        *,
        resume: bool = False,
        overwrite: bool = False,
        stop_after_steps: int | None = None,
    ) -> dict[str, Any]:
        """Train, validating each epoch; finally evaluate the best checkpoint on ``test``.

        Args:
            train, val, test: labelled graphs (fidelity indices matching ``fidelity_names``).
                Without ``val``, ``val_fraction`` of ``train`` is held out.
            resume: continue from ``output_dir/last.pt`` if it exists.
            overwrite: replace a run that ``output_dir`` holds; without it or ``resume`` such a
                directory is an error, raised before any training (:func:`claim_output_dir`).
            stop_after_steps: return (after writing ``last.pt``) once this many optimiser steps
                have been taken in total, e.g. to split a long run over time-limited jobs.

        Returns:
            {"best": {"value", "epoch"}, "val": metrics at the best epoch, "test": metrics or None,
             "stopped": bool}; once finished also "epochs_run", "steps" (optimiser steps), "wall_s"
            (seconds in fit, resumed calls included), "data" (:func:`~mfwrap.train.metrics.describe_data`).
            ``metrics.json`` holds these with the config and the history, and ``epoch_wall``: each
            epoch's wall seconds and the seconds elapsed at its end (also the last two columns of
            ``metrics.csv``).
        """
        claim_output_dir(self.out_dir, resume=resume, overwrite=overwrite)
        self._session_start, self._wall_before, self._epoch_started = time.perf_counter(), 0.0, None
        held_out = val is None and self.config.val_fraction > 0
        if held_out:
            train, val = self.split_validation(train)
        if self.config.scheduler == "plateau" and not val:
            raise ValueError(
                "scheduler 'plateau' lowers the learning rate when the validation error stops improving: "
                "give validation frames (val=..., or val_fraction > 0)"
            )
        train = list(train)
        self._train_fidelity = torch.tensor([int(g[K.FIDELITY]) for g in train], dtype=torch.long)
        if train:  # the model file records its training data's elements (mfwrap.model_file.trained_elements)
            record_elements(self.model, torch.cat([g[K.ATOMIC_NUMBERS] for g in train]))
        steps_per_epoch = len(self._batches_of_epoch(len(train), 0))
        if steps_per_epoch == 0:
            raise ValueError(f"{len(train)} training structures are too few for {self.ctx.world_size} processes")
        self.data = describe_data(train, val, self.fidelity_names, self.config.val_fraction if held_out else None)
        self.setup_optimiser(self.config.epochs * steps_per_epoch)
        self.data_fingerprints = {"train": data_fingerprint(train), "val": data_fingerprint(val)}
        start_epoch = start_step = global_step = 0
        self.epoch_loss_sum = 0.0
        if resume and (self.out_dir / "last.pt").is_file():
            start_epoch, start_step, global_step = self._resume(len(train))
        else:
            torch.manual_seed(self.config.seed)
            if self.config.fit_composition:
                fit_composition(self.model, train)
        line = stage_line(self.out_dir.name, self.data, self.config, self.target_fidelity, steps_per_epoch)
        self.say(line + (f"; resumed after {global_step} steps" if global_step else ""))

        self.model.train()
        epochs = tqdm(
            range(start_epoch, self.config.epochs),
            desc="epochs",
            disable=not self.show_progress,
            initial=start_epoch,
            total=self.config.epochs,
        )
        for epoch in epochs:
            if val and self.config.patience and epoch - 1 - self.best["epoch"] >= self.config.patience:
                break  # no improvement on validation for `patience` epochs
            if start_step == 0 or self._epoch_started is None:
                self._epoch_started = self.elapsed()
            batches = self._batches_of_epoch(len(train), epoch)
            for step in tqdm(
                range(start_step, len(batches)),
                desc=f"epoch {epoch}",
                leave=False,
                disable=not self.show_progress,
                initial=start_step,
                total=len(batches),
            ):
                self.epoch_loss_sum += float(self.train_step(train, batches[step]))
                global_step += 1
                done = stop_after_steps is not None and global_step >= stop_after_steps
                if done or (self.config.checkpoint_every and global_step % self.config.checkpoint_every == 0):
                    self._save_last(epoch, step + 1, global_step, len(train))
                if done:
                    return {"best": self.best, "val": None, "test": None, "stopped": True}
            summed = self.ctx.sum_(torch.tensor(self.epoch_loss_sum, dtype=torch.float64))
            mean_loss = float(summed) / (self.ctx.world_size * len(batches))
            start_step, self.epoch_loss_sum = 0, 0.0
            self._end_of_epoch(epoch, val, mean_loss)
            self._save_last(epoch + 1, 0, global_step, len(train))
            epochs.set_postfix(loss=f"{mean_loss:.4g}", best=f"{self.best['value']:.4g}")
        self.steps_done = global_step
        return self._finish(val, test)

    def _end_of_epoch(self, epoch: int, val: Sequence[Data] | None, mean_loss: float) -> None:
        metrics = self.evaluate(val) if val else {}
        value = self.score(metrics) if val else -epoch  # without validation the last epoch is "best"
        elapsed = self.elapsed()
        self.epoch_wall.append({"epoch": epoch, "wall_s": elapsed - self._epoch_started, "elapsed_s": elapsed})
        if self.config.scheduler == "plateau":
            self.scheduler.step(value)
        extra = {"compile_seconds": self.compile_seconds} if self.compile_seconds is not None else {}
        # lr: what the next step uses (after this epoch's steps, or its plateau reduction)
        self._log(
            epoch,
            "train",
            {},
            loss=mean_loss,
            lr=self.scheduler.get_last_lr()[0],
            skipped_batches=self.skipped_batches,
            **extra,
        )
        self._log(epoch, "val", metrics)
        if not self.show_progress:  # a progress bar shows the epochs on a terminal; elsewhere one line each
            at_target = (self.target_fidelity, metrics.get(self.target_fidelity))
            lr = self.scheduler.get_last_lr()[0]
            self.say(epoch_line(self.out_dir.name, self.config.epochs, mean_loss, at_target, lr, self.epoch_wall[-1]))
        if value < self.best["value"]:
            self.best = {"value": value, "epoch": epoch, "metric": self.config.best_metric}
            self.save_model(self.out_dir / "best.pt", {"epoch": epoch, "val": metrics})
        self._write_logs()

    def _finish(self, val: Sequence[Data] | None, test: Sequence[Data] | None) -> dict[str, Any]:
        self.ctx.barrier()
        best = read_payload(self.out_dir / "best.pt", map_location=self.device)
        self.model.load_state_dict(best["state_dict"])
        test_metrics = self.evaluate(test) if test else None
        if test_metrics is not None:
            self._log(best["epoch"], "test", test_metrics)
        epochs_run = 1 + max((row["epoch"] for row in self.history if row["split"] == "train"), default=-1)
        summary = {
            "best": self.best,
            "val": best["val"],
            "test": test_metrics,
            "stopped": False,
            "skipped_batches": self.skipped_batches,
            "compile_seconds": self.compile_seconds,
            "epochs_run": epochs_run,
            "steps": self.steps_done,
            "wall_s": self.elapsed(),
            "data": self.data,
        }
        self._write_logs(summary)
        return summary


def _describe_or_none(model: nn.Module) -> dict[str, Any] | None:
    try:
        return describe_model(model)
    except TypeError:
        return None
