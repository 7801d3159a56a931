"""The ``mfwrap`` command: train from a YAML config, evaluate a checkpoint, predict structures.

    mfwrap train CONFIG.yaml [--resume | --overwrite] [--output-dir DIR]
    mfwrap evaluate CHECKPOINT DATA --fidelity NAME [--energy-key KEY ...] [--json OUT]
    mfwrap predict CHECKPOINT STRUCTURES [--fidelity NAME] [--output OUT.extxyz [--prefix P] [--overwrite]]
    mfwrap bench EXPERIMENT|all --level quick|medium|full [--seeds 0 1 2] [--jobs 2]
    mfwrap bench report [--root runs/suite] [--out benchmarks/results/suite] [--level L] [--force]

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


def _device(requested: str) -> str:
    """The torch device ``--device`` names ("auto": the GPU if torch sees one, else the CPU); an
    error naming it when it is not a device or not one this machine has."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ValueError(f"--device {requested}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise ValueError(f"--device {requested}: torch sees no CUDA GPU on this machine; use --device cpu or auto")
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {requested}: torch sees {count} GPU(s), cuda:0 to cuda:{count - 1}")
    return str(device)


def _fidelity(model: Any, checkpoint: dict, requested: str | None) -> tuple[str | None, str, int]:
    """(name for mfwrap.predict, name for reports, index for graphs) of the requested fidelity.

    A multi-fidelity model needs ``requested`` when it has several fidelities; a single-fidelity
    model (backbone, Δ) was trained for one fidelity of its run, which is the default.
    """
    from mfwrap.fidelity import DEFAULT_FIDELITY, fidelity_names_of, is_multi_fidelity, resolve_fidelity

    multi = is_multi_fidelity(model)
    names = list(fidelity_names_of(model) if multi else checkpoint.get("fidelity_names") or [DEFAULT_FIDELITY])
    target = None if multi else checkpoint.get("target_fidelity") or names[-1]
    index = resolve_fidelity(names, requested, default=target, option="--fidelity")
    if not multi and names[index] != target:
        raise ValueError(
            f"this is a single-fidelity model of fidelity {target!r}; it does not predict {names[index]!r}"
        )
    return (requested if multi else None), names[index], index


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mfwrap.data.readers import DEFAULT_KEYS, LabelKeyError, read_dataset, to_graphs
    from mfwrap.model_file import read_model_file, warn_unseen_elements
    from mfwrap.train.config import TrainConfig
    from mfwrap.train.metrics import format_table
    from mfwrap.train.trainer import Trainer

    if args.json:
        _check_output("--json", args.json, [args.data, args.checkpoint], overwrite=True)
    device = _device(args.device)
    model, checkpoint = read_model_file(args.checkpoint)
    _, name, index = _fidelity(model, checkpoint, args.fidelity)
    names = list(checkpoint.get("fidelity_names") or ["default"])
    given = {target: getattr(args, f"{target}_key") for target in DEFAULT_KEYS}  # None where not given
    keys = {
        target: DEFAULT_KEYS[target] if key is None else None if key.lower() == "none" else key
        for target, key in given.items()
    }
    named = [target for target, key in given.items() if key is not None]  # must be in the file, unlike defaults
    try:
        records = read_dataset(args.data, name, keys, strict=named)
    except LabelKeyError as error:
        raise LabelKeyError(f"{error} (--energy-key, --forces-key, --stress-key, --magmoms-key)") from None
    graphs = to_graphs(records, model.graph_spec, {name: index})
    warn_unseen_elements(model, [g.atomic_numbers for g in graphs])
    targets = checkpoint.get("targets", "efsm")
    config = TrainConfig(
        targets=targets,
        eval_batch_size=args.batch_size,
        device=device,
        progress=False,
        output_dir=str(Path(args.checkpoint).parent),
    )
    metrics = Trainer(model, config, fidelity_names=names).evaluate(graphs)
    if not metrics.get(name):
        labelled = sorted({target for record in records for target in record.labels})
        raise ValueError(
            f"{args.data}: nothing to evaluate: its frames label {labelled}, which the model does not predict "
            f"(targets {targets!r}); name the keys of its labels with --energy-key, --forces-key, ..."
        )
    print(f"{len(graphs)} structures from {args.data} at fidelity {name!r}:")
    print(format_table({Path(args.checkpoint).name: metrics}, name))
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=1))
    return 0


def _check_output(option: str, output: str, inputs: Sequence[str], overwrite: bool) -> None:
    """Refuse an output file (given with ``option``) that is one of ``inputs`` (the same file, through
    links too), a directory, or an existing file without ``overwrite``."""
    path = Path(output)
    if path.is_dir():
        raise ValueError(f"{option} {output}: is a directory; give a file name")
    if not path.exists():
        return
    for given in inputs:
        if os.path.exists(given) and os.path.samefile(path, given):
            raise ValueError(f"{option} {output}: is the input {given}; refused, as it would replace it")
    if not overwrite:
        raise ValueError(f"{option} {output}: exists; pass --overwrite to replace it, or choose another file")


def _prediction_keys(prefix: str) -> dict[str, str]:
    return {target: f"{prefix}{target}" for target in ("energy", "forces", "stress", "magmoms")}


def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np
    from ase.stress import full_3x3_to_voigt_6_stress

    from mfwrap.data.graph import EV_PER_A3_TO_GPA
    from mfwrap.data.readers import read_structures
    from mfwrap.model_file import read_model_file
    from mfwrap.predict import predict

    if args.output:
        _check_output("--output", args.output, [args.structures, args.checkpoint], args.overwrite)
    device = _device(args.device)
    model, checkpoint = read_model_file(args.checkpoint, map_location=device)
    frames = read_structures(args.structures)
    keys = _prediction_keys(args.prefix)
    for i, atoms in enumerate(frames if args.output else []):
        held = set(atoms.info) | set(atoms.arrays) | set(getattr(atoms.calc, "results", None) or {})
        if taken := sorted(held.intersection(keys.values())):
            raise ValueError(
                f"{args.structures}: frame {i} already has {taken}; choose another --prefix than {args.prefix!r}, "
                "so no key of the input is replaced"
            )
    results = predict(
        model, frames, fidelity=_fidelity(model, checkpoint, args.fidelity)[0], batch_size=args.batch_size
    )
    for atoms, result in zip(frames, results):  # beside the frame's own labels, which stay as they were
        atoms.info[keys["energy"]] = result["energy"]
        atoms.arrays[keys["forces"]] = result["forces"]
        stress = result.get("stress")
        if stress is not None and np.isfinite(stress).all():
            atoms.info[keys["stress"]] = full_3x3_to_voigt_6_stress(stress / EV_PER_A3_TO_GPA)
        if "magmoms" in result:
            atoms.arrays[keys["magmoms"]] = result["magmoms"]
    if args.output:
        _write_extxyz(args.output, frames)
    for i, (atoms, result) in enumerate(zip(frames, results)):
        print(
            f"{i:>5} {atoms.get_chemical_formula():<20} E = {result['energy']:.6f} eV "
            f"({result['energy'] / len(atoms):.6f} eV/atom)  max|F| = {np.abs(result['forces']).max():.4f} eV/Å"
        )
    return 0


def _write_extxyz(path: str, frames: list) -> None:
    """``frames`` as an extxyz file, written atomically (an interrupted write leaves no partial file)."""
    import io

    import ase.io

    from mfwrap.files import write_text

    text = io.StringIO()
    ase.io.write(text, frames, format="extxyz")
    write_text(path, text.getvalue())


def cmd_bench(args: argparse.Namespace) -> int:
    from mfwrap.bench.grid import EXPERIMENTS
    from mfwrap.bench.report import warn_old_layout, write_report, write_reports
    from mfwrap.bench.runner import run_suite

    if args.experiment == "report":
        for path in write_reports(args.root, args.out, args.level, args.force):
            print(path)
        return 0
    level = args.level or "quick"
    root, out = Path(args.root) / level, Path(args.out) / level  # each level its own folders
    if Path(args.root).is_dir():
        warn_old_layout(Path(args.root))
    experiments = list(EXPERIMENTS) if args.experiment == "all" else [args.experiment]
    if args.plan:
        from mfwrap.bench.runner import plan_suite

        rows = plan_suite(
            experiments,
            level,
            args.seeds,
            backbone=args.backbone,
            root=root,
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
            f"the finished runs under {root} (* not measured: --seconds-per-step); done: runs finished there, "
            f"{done_hours:.1f} run-hours of wall time (one run's own; runs side by side overlap); left: at most "
            f"{left_hours:.1f} h for the runs not finished, with {args.jobs} at once (killed runs resume part-way)"
        )
        return 0
    outcome = run_suite(
        experiments, level, args.seeds, root, jobs=args.jobs, backbone=args.backbone, report=out, eager=args.eager
    )
    write_report(root, out, args.force)
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
            default=None,
            help=f"info / arrays / calculator result key of the {target} label, which some frame must have; "
            f"'none': not evaluated (default: {target!r} where present)",
        )
    evaluate.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    evaluate.set_defaults(func=cmd_evaluate)

    predict = commands.add_parser("predict", help="energies, forces, stress, magmoms of structures")
    common(predict)
    predict.add_argument("structures", help="structures, any file ase.io.read reads")
    predict.add_argument(
        "--output",
        default=None,
        help="write the structures to this extxyz file with the predictions beside their own labels, under "
        "PREFIX + energy / forces / stress (ASE units, eV/Å^3 Voigt) / magmoms; never one of the inputs",
    )
    predict.add_argument("--prefix", default="mfwrap_", help="of the keys of the predictions (default mfwrap_)")
    predict.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    predict.set_defaults(func=cmd_predict)

    from mfwrap.bench.backbones import BACKBONES
    from mfwrap.bench.grid import EXPERIMENTS, LEVELS

    bench = commands.add_parser(
        "bench",
        help="the benchmark suite: run an experiment (resumable) or write the report",
        description="Runs the seed paper's experiments (mfwrap.bench.grid) as one directory per run under "
        "--root/<level>, skipping finished runs and resuming killed ones, then writes the report (mean ± sd over "
        "seeds, tables, plots) to --out/<level>.",
    )
    bench.add_argument("experiment", choices=[*EXPERIMENTS, "all", "report"])
    bench.add_argument(
        "--level",
        choices=list(LEVELS),
        default=None,
        help="quick (default): pipeline check, minutes; medium: paper CHGNet on the shipped LMFP set, hours on a "
        "2-core CPU; full: the paper's settings (a GPU). For report: only this level (default: every level)",
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
    bench.add_argument("--root", default="runs/suite", help="the runs go to ROOT/<level> (default runs/suite)")
    bench.add_argument(
        "--out", default="benchmarks/results/suite", help="the report goes to OUT/<level> (default %(default)s)"
    )
    bench.add_argument(
        "--force",
        action="store_true",
        help="let the report replace one of another level or with more runs (refused by default)",
    )
    bench.set_defaults(func=cmd_bench)
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


if __name__ == "__main__":
    sys.exit(main())
