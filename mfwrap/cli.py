"""The ``mfwrap`` command: train from a YAML config, evaluate a checkpoint, predict structures.

    mfwrap train CONFIG.yaml [--resume | --overwrite] [--output-dir DIR]
    mfwrap evaluate CHECKPOINT DATA --fidelity NAME [--json OUT]
    mfwrap predict CHECKPOINT STRUCTURES [--fidelity NAME] [--output OUT.extxyz]
    mfwrap bench EXPERIMENT|all --level quick|medium|full [--seeds 0 1 2] [--jobs 2]
    mfwrap bench report [--root runs/suite] [--out benchmarks/results/suite]

Multi-process / multi-GPU training: ``torchrun --nproc-per-node=N -m mfwrap.cli train CONFIG.yaml``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml


def _yaml(value: Any) -> str:
    """A default as YAML writes it, on one line."""
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000).removesuffix("\n...\n").strip()


def _entry(key: str, text: str) -> list[str]:
    """``key`` then ``text`` (reST roles and literals as plain text) from column 40, wrapped at 110 characters."""
    import textwrap

    plain = re.sub(r":\w+:`([^`]+)`", r"\1", re.sub(r":\w+:`~(?:[\w.]+\.)?([^`]+)`", r"\1", text)).replace("``", "")
    wrapped = textwrap.wrap(plain, 70, break_on_hyphens=False)
    head = [f"{key:<39} {wrapped[0]}"] if len(key) < 40 else [key, " " * 40 + wrapped[0]]
    return head + [" " * 40 + more for more in wrapped[1:]]


def _describe(cls: type, indent: int, sections: dict[str, type] | None = None, skip: tuple[str, ...] = ()) -> list[str]:
    """One entry per field of ``cls`` but ``skip`` (``name: default  (type) help``); ``sections`` are
    nested dataclasses, listed field by field below their name."""
    import dataclasses

    from mfwrap.train.config import field_docs

    sections = sections or {}
    lines = []
    for doc in field_docs(cls):
        if doc.name in skip:
            continue
        required = doc.default is dataclasses.MISSING
        default = "" if doc.name in sections else "(required)" if required else _yaml(doc.default)
        lines += _entry(f"{' ' * indent}{doc.name}: {default}", f"({doc.type}) {doc.help}")
        if doc.name in sections:
            lines += _describe(sections[doc.name], indent + 2)
    return lines


def config_help() -> str:
    """``mfwrap train --help``: every option of a run config, generated from the config dataclasses
    (their fields, types, defaults and the first sentence of each field's docstring entry)."""
    from mfwrap.datasets.registry import DATASETS, Split
    from mfwrap.train.baselines import Experiment, ModelConfig
    from mfwrap.train.config import TrainConfig
    from mfwrap.train.data import DataConfig, Source

    lines = [
        "CONFIG.yaml sections (all optional but data), each option as",
        "",
        "  name: default                         (type) what it is",
        "",
        "Relative paths in the file (data sources, output_dir, cache_dir) are relative to the file's folder;",
        "--output-dir, given on the command line, is relative to the working directory.",
        "",
    ]
    lines += _entry("data:", f"(DataConfig) {DataConfig.__doc__.splitlines()[0]}")
    lines += _describe(DataConfig, 2, skip=("dataset", "split"))
    lines += _entry(
        "  <dataset>: {<options>}",
        "instead of sources, a registered dataset (mfwrap.datasets.registry: "
        f"{', '.join(DATASETS)}), split as the benchmark suite splits it; the options:",
    )
    lines += _describe(Split, 4)
    lines += _entry("  each source of train / val / test:", "a mapping of")
    lines += _describe(Source, 4)
    lines += _describe(Experiment, 0, sections={"model": ModelConfig, "train": TrainConfig})
    return "\n".join(lines) + "\n"


def _load_run_config(path: str, overrides: argparse.Namespace) -> tuple[Any, Any]:
    """(Experiment, DataConfig) of the run config at ``path``, checked whole (every key, value type and
    choice, the target fidelity) before any file is read or anything trained: ValueError, one line
    starting with ``path``. Relative paths in the file are relative to its folder (``--output-dir``,
    given on the command line, to the working directory)."""
    import dataclasses

    from mfwrap.fidelity import resolve_fidelity
    from mfwrap.train.baselines import Experiment
    from mfwrap.train.config import from_mapping
    from mfwrap.train.data import DataConfig

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {' '.join(str(error).split())}") from None
    known = ["data", *(f.name for f in dataclasses.fields(Experiment))]
    try:
        if not isinstance(raw, dict):
            raise ValueError(f"expected a mapping of {known} (see mfwrap train --help), got {raw!r}")
        unknown = [key for key in raw if key not in known]
        if unknown:
            raise ValueError(f"unknown top-level key(s) {unknown}; known are {known}")
        if "data" not in raw:
            raise ValueError("a 'data' section is required (see mfwrap train --help)")
        folder = Path(path).parent
        data = DataConfig.from_dict(raw.pop("data")).relative_to(folder)
        train = raw.pop("train", None) or {}
        if isinstance(train, dict) and isinstance(train.get("output_dir"), str):
            train = {**train, "output_dir": str(folder / Path(train["output_dir"]).expanduser())}
        if overrides.output_dir is not None and isinstance(train, dict):
            train = {**train, "output_dir": overrides.output_dir}
        experiment = from_mapping(Experiment, {**raw, "train": train}, "")
        target = experiment.train.target_fidelity
        resolve_fidelity(data.fidelities, target, default=data.fidelities[-1], option="train.target_fidelity")
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return experiment, data


def cmd_train(args: argparse.Namespace) -> int:
    from mfwrap.train.baselines import claim_output, initial_backbone, run_experiment
    from mfwrap.train.data import load_data
    from mfwrap.train.metrics import format_table

    experiment, data = _load_run_config(args.config, args)
    # refused before the backbone is built and the data read; --overwrite deletes once the data are read
    claim_output(experiment, resume=args.resume, overwrite=args.overwrite, check_only=True)
    backbone = initial_backbone(experiment)  # built (or loaded) once: its graph_spec makes the graphs
    train, val, test = load_data(data, backbone.graph_spec)
    summary = run_experiment(
        experiment, data.fidelities, train, val, test, resume=args.resume, overwrite=args.overwrite, backbone=backbone
    )
    target = experiment.train.target_fidelity or data.fidelities[-1]
    if summary.get("test"):
        print(f"test errors at fidelity {target!r} ({experiment.method}):")
        print(format_table({experiment.method: summary["test"]}, target))
    print(f"outputs in {Path(experiment.train.output_dir) / experiment.method}")
    return 0


def _read_frames(path: str) -> list:
    import ase.io
    from ase import Atoms

    frames = ase.io.read(path, index=":")
    return [frames] if isinstance(frames, Atoms) else list(frames)


def _fidelity(model: Any, checkpoint: dict, requested: str | None) -> tuple[str | None, str, int]:
    """(name for mfwrap.predict, name for reports, index for graphs) of the requested fidelity.

    A multi-fidelity model needs ``requested`` when it has several fidelities; a single-fidelity
    model (backbone, Δ) was trained for one fidelity of its run, which is the default.
    """
    from mfwrap.fidelity import DEFAULT_FIDELITY, fidelity_names_of, is_multi_fidelity, resolve_fidelity

    multi = is_multi_fidelity(model)
    names = list(fidelity_names_of(model) if multi else checkpoint.get("fidelity_names") or [DEFAULT_FIDELITY])
    target = None if multi else checkpoint.get("target_fidelity") or names[-1]
    try:
        index = resolve_fidelity(names, requested, default=target, option="--fidelity")
    except ValueError as error:
        raise SystemExit(str(error)) from None
    if not multi and names[index] != target:
        raise SystemExit(
            f"this is a single-fidelity model of fidelity {target!r}; it does not predict {names[index]!r}"
        )
    return (requested if multi else None), names[index], index


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mfwrap.data.readers import DEFAULT_KEYS, read_dataset, to_graphs
    from mfwrap.model_file import read_model_file
    from mfwrap.train.config import TrainConfig
    from mfwrap.train.metrics import format_table
    from mfwrap.train.trainer import Trainer

    model, checkpoint = read_model_file(args.checkpoint)
    _, name, index = _fidelity(model, checkpoint, args.fidelity)
    names = list(checkpoint.get("fidelity_names") or ["default"])
    keys = {target: getattr(args, f"{target}_key") for target in DEFAULT_KEYS}
    keys = {target: None if key.lower() == "none" else key for target, key in keys.items()}
    records = read_dataset(args.data, name, keys, strict=False)
    graphs = to_graphs(records, model.graph_spec, {name: index})
    config = TrainConfig(
        targets=checkpoint.get("targets", "efsm"),
        eval_batch_size=args.batch_size,
        device=args.device,
        progress=False,
        output_dir=str(Path(args.checkpoint).parent),
    )
    metrics = Trainer(model, config, fidelity_names=names).evaluate(graphs)
    print(f"{len(graphs)} structures from {args.data} at fidelity {name!r}:")
    print(format_table({Path(args.checkpoint).name: metrics}, name))
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=1))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import ase.io
    import numpy as np
    import torch
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.stress import full_3x3_to_voigt_6_stress

    from mfwrap.data.graph import EV_PER_A3_TO_GPA
    from mfwrap.model_file import read_model_file
    from mfwrap.predict import predict

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model, checkpoint = read_model_file(args.checkpoint, map_location=device)
    frames = _read_frames(args.structures)
    results = predict(
        model, frames, fidelity=_fidelity(model, checkpoint, args.fidelity)[0], batch_size=args.batch_size
    )
    for atoms, result in zip(frames, results):
        stress = result.get("stress")
        labels = {"energy": result["energy"], "forces": result["forces"]}
        if stress is not None and np.isfinite(stress).all():
            labels["stress"] = full_3x3_to_voigt_6_stress(stress / EV_PER_A3_TO_GPA)
        if "magmoms" in result:
            labels["magmoms"] = result["magmoms"]
        atoms.calc = SinglePointCalculator(atoms, **labels)
    if args.output:
        ase.io.write(args.output, frames, format="extxyz")
    for i, (atoms, result) in enumerate(zip(frames, results)):
        print(
            f"{i:>5} {atoms.get_chemical_formula():<20} E = {result['energy']:.6f} eV "
            f"({result['energy'] / len(atoms):.6f} eV/atom)  max|F| = {np.abs(result['forces']).max():.4f} eV/Å"
        )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from mfwrap.bench.grid import EXPERIMENTS
    from mfwrap.bench.report import write_report
    from mfwrap.bench.runner import run_suite

    if args.experiment == "report":
        for path in write_report(args.root, args.out):
            print(path)
        return 0
    experiments = list(EXPERIMENTS) if args.experiment == "all" else [args.experiment]
    if args.plan:
        from mfwrap.bench.runner import plan_suite

        rows = plan_suite(
            experiments,
            args.level,
            args.seeds,
            backbone=args.backbone,
            root=args.root,
            seconds_per_step=args.seconds_per_step,
        )
        print(
            f"{'experiment':<20}{'runs':>6}{'trained':>9}{'steps':>10}{'pre-train':>11}{'s/step':>8}{'hours':>7}"
            f"{'done':>6}{'done h':>8}{'left h':>8}"
        )
        total_hours = done_hours = left_hours = 0.0
        for name, r in rows.items():
            wall_hours = lambda steps: steps * r["seconds_per_step"] / max(args.jobs, 1) / 3600  # noqa: B023, E731
            hours, left = wall_hours(r["steps"] + r["pretrain_steps"]), wall_hours(r["left_steps"])
            total_hours += hours
            left_hours += left
            done_hours += r["done_wall_s"] / 3600
            rate = f"{r['seconds_per_step']:.2f}" + ("" if r["measured"] else "*")
            print(
                f"{name:<20}{r['runs']:>6}{r['trained']:>9}{r['steps']:>10}{r['pretrain_steps']:>11}{rate:>8}"
                f"{hours:>7.1f}{r['done']:>6}{r['done_wall_s'] / 3600:>8.1f}{left:>8.1f}"
            )
        print(
            f"total {total_hours:.1f} h with {args.jobs} run(s) at once, finished runs included; s/step measured on "
            f"the finished runs under {args.root} (* not measured: --seconds-per-step); done: runs finished there, "
            f"{done_hours:.1f} run-hours of wall time (one run's own; runs side by side overlap); left: at most "
            f"{left_hours:.1f} h for the runs not finished, with {args.jobs} at once (killed runs resume part-way)"
        )
        return 0
    outcome = run_suite(
        experiments,
        args.level,
        args.seeds,
        args.root,
        jobs=args.jobs,
        backbone=args.backbone,
        report=args.out,
        eager=args.eager,
    )
    write_report(args.root, args.out)
    return 1 if outcome["failed"] else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mfwrap",
        description="Multi-fidelity interatomic potentials: train, evaluate, predict.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train",
        help="train a model from a YAML config",
        description=config_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("config", help="YAML run config (sections described above)")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUTPUT_DIR/<method>/last.pt if it exists (same config required); "
        "the result equals an uninterrupted run",
    )
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run OUTPUT_DIR holds: deletes its best.pt, last.pt, metrics.json, metrics.csv (no other "
        "file) before training; without it or --resume, an OUTPUT_DIR holding a run is an error",
    )
    train.add_argument("--output-dir", default=None, help="overrides train.output_dir of the config")
    train.set_defaults(func=cmd_train)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "checkpoint",
            help="an mfwrap model file: a checkpoint of mfwrap train (best.pt, last.pt) or MultiFidelity.save",
        )
        sub.add_argument("--fidelity", default=None, help="fidelity name; required for models with several fidelities")
        sub.add_argument("--batch-size", type=int, default=16, help="structures per forward pass (default 16)")
        sub.add_argument(
            "--device", default="auto", help="auto (GPU if available), cpu, cuda, cuda:1, ... (default auto)"
        )

    evaluate = commands.add_parser("evaluate", help="MAE / RMSE of a checkpoint on labelled structures")
    common(evaluate)
    evaluate.add_argument("data", help="labelled structures, any file ase.io.read reads (extxyz, ASE db, ...)")
    for target in ("energy", "forces", "stress", "magmoms"):
        evaluate.add_argument(
            f"--{target}-key",
            default=target,
            help=f"calculator result / info / arrays key of the {target} label, 'none' if "
            f"unlabelled (default {target!r})",
        )
    evaluate.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    evaluate.set_defaults(func=cmd_evaluate)

    predict = commands.add_parser("predict", help="energies, forces, stress, magmoms of structures")
    common(predict)
    predict.add_argument("structures", help="structures, any file ase.io.read reads")
    predict.add_argument("--output", default=None, help="write the structures with predictions to this extxyz file")
    predict.set_defaults(func=cmd_predict)

    from mfwrap.bench.backbones import BACKBONES
    from mfwrap.bench.grid import EXPERIMENTS, LEVELS

    bench = commands.add_parser(
        "bench",
        help="the benchmark suite: run an experiment (resumable) or write the report",
        description="Runs the seed paper's experiments (mfwrap.bench.grid) as one directory per run under --root, "
        "skipping finished runs and resuming killed ones, then writes the report (mean ± sd over seeds, "
        "tables, plots) to --out.",
    )
    bench.add_argument("experiment", choices=[*EXPERIMENTS, "all", "report"])
    bench.add_argument(
        "--level",
        choices=list(LEVELS),
        default="quick",
        help="quick: pipeline check, minutes; medium: paper CHGNet on the shipped LMFP set, hours on a "
        "2-core CPU; full: the paper's settings (a GPU)",
    )
    bench.add_argument("--seeds", type=int, nargs="+", default=[0], help="data subset and initialisation seeds")
    needs = "".join(f"; {b.name} {b.note}" for b in BACKBONES.values() if b.note)
    bench.add_argument(
        "--backbone",
        choices=list(BACKBONES),
        default=None,
        help=f"override the experiment's backbone (mfwrap.bench.backbones{needs})",
    )
    bench.add_argument("--jobs", type=int, default=1, help="runs at once, one process and one thread each")
    bench.add_argument(
        "--plan",
        action="store_true",
        help="print the runs and optimiser steps the experiment(s) take at this level, and the time "
        "they take at --seconds-per-step; run nothing",
    )
    bench.add_argument(
        "--seconds-per-step",
        type=float,
        default=1.0,
        help="for --plan, where no finished run measures it: wall seconds per optimiser step of one "
        "run (1.0: paper CHGNet on LMFP, batch 4, compiled, one CPU thread, with evaluation, two "
        "runs at once)",
    )
    bench.add_argument(
        "--eager",
        action="store_true",
        help="eager training steps where the level compiles them (medium, full): for a torch on which "
        "torch.compile of the training step fails (2.11 does; 2.13 is tested); results record it",
    )
    bench.add_argument("--root", default="runs/suite", help="where the runs go (default runs/suite)")
    bench.add_argument("--out", default="benchmarks/results/suite", help="where the report goes")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command. Errors in what the user gave (files, configs, structures) and OS errors (a file
    or folder that cannot be read or written) print one line and exit with status 2; set
    MFWRAP_TRACEBACK=1 to see the traceback instead."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (OSError, ValueError, KeyError) as error:
        if os.environ.get("MFWRAP_TRACEBACK"):
            raise
        parser.exit(2, f"mfwrap {args.command}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
