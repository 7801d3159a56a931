"""Training loop: composition fit, Adam + a cosine (or constant, or plateau) schedule, masked Huber
loss with double backward, validation every epoch, best-on-validation and resumable checkpoints, metric logs, DDP.

Reproducibility: the data order of epoch e is ``randperm`` from a generator seeded with
``(seed, e)``; ``last.pt`` stores model, optimiser, scheduler, RNG states, the epoch and the number
of steps done in it (:func:`mfwrap.train.checkpoint.save_last`). ``fit(resume=True)`` skips those
steps and continues, so a run killed after any checkpoint ends with the same weights as an
uninterrupted one.

Log (:func:`mfwrap.train.run_log.say`, stderr): what the run trains and validates on, then one line
per epoch where no progress bar is shown. The output directory is claimed before any training
(:func:`mfwrap.train.output_dir.claim_output_dir`).

Distributed: each global batch of ``batch_size`` structures is split into ``world_size``
contiguous slices; losses are normalised by the *global* label counts (see mfwrap.train.loss),
so N processes follow the one-process trajectory up to floating-point summation order.
"""

from __future__ import annotations

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

from mfwrap.compile import inductor_cache_dir
from mfwrap.data import keys as K
from mfwrap.fidelity import fidelity_names_of
from mfwrap.mechanisms.composition_fit import fit_composition
from mfwrap.model_file import describe_model, read_payload, record_elements, save_model, starts_trained
from mfwrap.physics import energy_and_derivatives
from mfwrap.train import checkpoint
from mfwrap.train.checkpoint import data_fingerprint, require_finite
from mfwrap.train.config import TrainConfig
from mfwrap.train.distributed import DistributedContext
from mfwrap.train.evaluation import evaluate
from mfwrap.train.loss import MultiTargetLoss, label_counts, targets_to_compute
from mfwrap.train.metrics import best_metric_value, describe_data, epoch_line, stage_line
from mfwrap.train.optim import SelectOutputs, freeze, make_optimiser, step_modules
from mfwrap.train.output_dir import claim_output_dir
from mfwrap.train.run_log import history_rows, say, write_metrics
from mfwrap.train.sampling import epoch_batches, split_validation
from mfwrap.train.step_errors import compile_failure, nonfinite_error

log = logging.getLogger(__name__)


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
        return split_validation(graphs, self.config.val_fraction, self.config.seed)

    def _batches_of_epoch(self, n: int, epoch: int) -> list[Tensor]:
        """Global batches (index tensors) of one epoch, in this run's deterministic order."""
        return epoch_batches(
            n,
            self._train_fidelity,
            epoch,
            seed=self.config.seed,
            batch_size=self.config.batch_size,
            fidelity_names=self.fidelity_names,
            sampling=self.config.fidelity_sampling,
            world_size=self.ctx.world_size if self.ctx.enabled else None,
        )

    def setup_optimiser(self, steps_total: int) -> None:
        """Freeze ``config.freeze``; create Adam, the learning-rate schedule (cosine over
        ``steps_total`` steps, constant, or cut on a validation plateau) and (distributed) the DDP
        wrapper. :meth:`fit` calls it; call it yourself only to drive
        :meth:`train_step` directly (e.g. in a benchmark)."""
        freeze(self.model, self.config.freeze)
        self.optimizer, self.scheduler = make_optimiser(self.model, self.config, steps_total)
        selected = self.selected = SelectOutputs(self.model, (K.ENERGY,))
        self.train_model, self.step_model = step_modules(
            selected, self.model, self.ctx, self.device, self.config.compile
        )

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
            raise compile_failure(error, self.config.compile) from error
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
        step = self.scheduler.last_epoch + 1
        raise nonfinite_error(self.model, graphs, local, terms, loss, self.fidelity_names, step)

    def evaluate(self, graphs: Sequence[Data]) -> dict[str, dict[str, dict[str, float]]]:
        """MAE / RMSE per fidelity and target on ``graphs`` (see :class:`ErrorAccumulator`)."""
        return evaluate(
            self.model,
            graphs,
            fidelity_names=self.fidelity_names,
            targets=self.targets,
            ctx=self.ctx,
            device=self.device,
            batch_size=self.config.eval_batch_size,
        )

    def score(self, metrics: dict[str, dict[str, dict[str, float]]]) -> float:
        """The ``best_metric`` value (lower is better) at the target fidelity."""
        return best_metric_value(metrics, self.target_fidelity, self.config)

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
        checkpoint.save_last(self, epoch, step_in_epoch, global_step, num_train)

    def _resume(self, num_train: int) -> tuple[int, int, int]:
        return checkpoint.resume(self, num_train)

    def _log(self, epoch: int, split: str, metrics: dict[str, dict[str, dict[str, float]]], **extra: float) -> None:
        self.history += history_rows(epoch, split, metrics, **extra)

    def _write_logs(self, summary: dict[str, Any] | None = None) -> None:
        if not self.ctx.is_main:
            return
        write_metrics(self, summary)

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
        residual = self.config.composition_reference == "residual" or (
            self.config.composition_reference == "auto" and starts_trained(self.model)
        )  # decided before this run's record of elements makes every model look trained
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
                fit_composition(self.model, train, residual=residual)
                if residual:
                    self.say(f"{self.out_dir.name}: composition fitted to the residual of the model's own prediction")
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
