"""The ``mfwrap`` command: train from a YAML config, evaluate a checkpoint, predict structures.

    mfwrap train CONFIG.yaml [--resume | --overwrite] [--output-dir DIR]
    mfwrap evaluate CHECKPOINT DATA --fidelity NAME [--energy-key KEY ...] [--json OUT]
    mfwrap predict CHECKPOINT STRUCTURES [--fidelity NAME] [--output OUT.extxyz [--prefix P] [--overwrite]]
    mfwrap export CHECKPOINT --fidelity NAME --output OUT.pt [--format mfwrap|chgnet|sevenn] [--overwrite]
    mfwrap bench EXPERIMENT|all --level quick|medium|full [--seeds 0 1 2] [--jobs 2]
    mfwrap bench report [--root runs/suite] [--out benchmarks/results/suite] [--level L] [--force]

Multi-process / multi-GPU training: ``torchrun --nproc-per-node=N -m mfwrap.cli train CONFIG.yaml``.
"""

from __future__ import annotations

import argparse
import os
from typing import Sequence

from mfwrap.cli.bench import add_bench_parser, cmd_bench
from mfwrap.cli.export import add_export_parser
from mfwrap.cli.inference import (
    _check_output,
    _device,
    _fidelity,
    _prediction_keys,
    _write_extxyz,
    add_inference_parsers,
    cmd_evaluate,
    cmd_predict,
)
from mfwrap.cli.train import _describe, _entry, _load_run_config, _yaml, add_train_parser, cmd_train, config_help

__all__ = [
    "_check_output",
    "_describe",
    "_device",
    "_entry",
    "_fidelity",
    "_load_run_config",
    "_prediction_keys",
    "_write_extxyz",
    "_yaml",
    "build_parser",
    "cmd_bench",
    "cmd_evaluate",
    "cmd_predict",
    "cmd_train",
    "config_help",
    "main",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mfwrap",
        description="Multi-fidelity interatomic potentials: train, evaluate, predict.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_train_parser(commands)
    add_inference_parsers(commands)
    add_export_parser(commands)
    add_bench_parser(commands)
    return parser


def _after_interrupt(args: argparse.Namespace) -> str:
    """What an interrupted command left, and how to go on."""
    import shlex

    if args.command == "train":
        again = ["mfwrap", "train", args.config, "--resume"]
        again += ["--output-dir", args.output_dir] if args.output_dir is not None else []
        return f"resume with: {shlex.join(again)}"
    if args.command == "bench" and args.experiment != "report":
        return "rerun the same command to go on: finished runs are kept, interrupted ones resume"
    return "run it again"


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command. Errors in what the user gave (files, configs, structures) and OS errors (a file
    or folder that cannot be read or written) print one line and exit with status 2; Ctrl-C prints one
    line saying how to go on and exits with status 130; set
    MFWRAP_TRACEBACK=1 to see the traceback instead."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (OSError, ValueError, KeyError) as error:
        if os.environ.get("MFWRAP_TRACEBACK"):
            raise
        parser.exit(2, f"mfwrap {args.command}: error: {error}\n")
    except KeyboardInterrupt:
        if os.environ.get("MFWRAP_TRACEBACK"):
            raise
        parser.exit(130, f"mfwrap {args.command}: interrupted; {_after_interrupt(args)}\n")
