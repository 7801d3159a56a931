"""The training log and a run's metric records.

Log (:func:`say`, stderr): what the run trains and validates on, then one line per epoch where no
progress bar is shown (line formats: :func:`mfwrap.train.metrics.stage_line`, ``epoch_line``).
Records: the history rows (:func:`history_rows`) written to ``metrics.csv`` and ``metrics.json``
(:func:`write_metrics`).
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import TYPE_CHECKING, Any

from mfwrap.files import write_text
from mfwrap.train.config import TrainConfig
from mfwrap.train.metrics import REPORT_UNITS

if TYPE_CHECKING:
    from mfwrap.train.trainer import Trainer


def say(line: str, config: TrainConfig) -> None:
    """One line of the training log: on stderr, flushed, from the main process (``RANK`` 0), unless
    ``config.progress`` is off. What a stage trains and validates on, and one line per epoch where no
    progress bar is shown (stderr not a terminal: batch jobs, CI, ``nohup``)."""
    if config.progress and os.environ.get("RANK", "0") == "0":
        print(line, file=sys.stderr, flush=True)


def history_rows(
    epoch: int, split: str, metrics: dict[str, dict[str, dict[str, float]]], **extra: float
) -> list[dict[str, Any]]:
    """The history rows of one split at one epoch: one per fidelity and target of ``metrics``, then
    one per ``extra`` value (fidelity "all", its value as "mae")."""
    rows = []
    for fidelity, per_target in metrics.items():
        for target, stats in per_target.items():
            rows.append(
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
        rows.append(
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
    return rows


def write_metrics(trainer: Trainer, summary: dict[str, Any] | None = None) -> None:
    """Write ``metrics.csv`` (``trainer``'s history, with each epoch's wall and elapsed seconds) and
    ``metrics.json`` (config, fidelity names, data, best, history, wall times and ``summary``) into its
    output directory."""
    out_dir = trainer.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = ["epoch", "split", "fidelity", "target", "unit", "mae", "rmse", "count"]
    wall = {row["epoch"]: row for row in trainer.epoch_wall}  # the epoch's wall seconds, the run's elapsed ones

    def timing(row: dict[str, Any]) -> list[str]:
        epoch = wall.get(row["epoch"]) if row["split"] != "test" else None
        return [str(epoch["wall_s"]), str(epoch["elapsed_s"])] if epoch else ["", ""]

    lines = [",".join(columns + ["wall_s", "elapsed_s"])]
    lines += [",".join([str(row[c]) for c in columns] + timing(row)) for row in trainer.history]
    write_text(out_dir / "metrics.csv", "\n".join(lines) + "\n")
    record = {
        "config": trainer.config.to_dict(),
        "fidelity_names": trainer.fidelity_names,
        "data": trainer.data,
        "best": trainer.best,
        "history": trainer.history,
        "epoch_wall": trainer.epoch_wall,
        "wall_s": trainer.elapsed(),
        **(summary or {}),
    }
    write_text(out_dir / "metrics.json", json.dumps(record, indent=1, default=float))
