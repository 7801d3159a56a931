"""The ``mfwrap`` command: train from a YAML config, evaluate a checkpoint, predict structures.

    mfwrap train CONFIG.yaml [--resume] [--output-dir DIR]
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
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

CONFIG_HELP = """\
CONFIG.yaml sections (all optional except data):

  method: multi_fidelity | single_fidelity | transfer | delta   (default multi_fidelity)
  model:
    backbone: backbones.chgnet:CHGNet    import path of the backbone class
    kwargs: {}                           constructor arguments (e.g. atom_fea_dim: 64)
    pretrained: null                     or a version for Class.from_pretrained, e.g. "0.3.0"
    mechanisms: ECMR                     any subset of E, C, M, R (ablations; "" = none)
  data:
    fidelities: [low, high]              index order; the last is the target fidelity
    train: [{path: low.xyz, fidelity: low}, {path: high.xyz, fidelity: high, limit: 100}]
    val:   [...]                         optional; else train.val_fraction is held out
    test:  [...]                         optional
      (per source: limit: N first frames; keys: {energy: NAME, forces: NAME, ...} where the file
       stores each label, a target left out = unlabelled; default: ASE's standard names)
    lmfp: {size: small, seed: 0, n_high: 100, n_val: 0}   instead of files: the LMFP set
  train:                                 mfwrap.train.TrainConfig; defaults = seed paper
    targets: efsm  epochs: 60  batch_size: 4  lr: 0.005  lr_min_fraction: 0.01
    scheduler: cos  weight_decay: 0  huber_delta: 0.1  grad_clip: 0  seed: 0
    loss_weights: {energy: 1, forces: 1, stress: 0.1, magmoms: 0.1}
    val_fraction: 0.1  eval_batch_size: 16  best_metric: weighted_mae  target_fidelity: null
    fit_composition: true  freeze: []  checkpoint_every: 0  output_dir: runs/mfwrap
    device: auto  progress: true  patience: 0  nonfinite: error (or skip)  compile: false (or true)
    fidelity_loss_weights: {}            e.g. {high: 4}: weight of each fidelity's entries in the loss
    fidelity_sampling: {}                e.g. {low: 1, high: 1}: each fidelity's share of an epoch's draws
  pretrain: {epochs: 30}                 transfer / delta / warm_start: overrides of train for stage one
  warm_start: false                      multi_fidelity: pre-train the backbone on the other fidelities first
  transfer_freeze: null                  prefixes frozen in fine-tuning; null = all but readouts
  delta_reference: labels                labels (needs paired data) | model
"""


def _load_run_config(path: str, overrides: argparse.Namespace) -> tuple[Any, Any]:
    from mfwrap.train.baselines import Experiment
    from mfwrap.train.data import DataConfig

    raw = yaml.safe_load(Path(path).read_text()) or {}
    if "data" not in raw:
        raise SystemExit(f"{path}: a 'data' section is required (see mfwrap train --help)")
    data = DataConfig(**raw.pop("data"))
    train = dict(raw.pop("train", None) or {})
    if overrides.output_dir is not None:
        train["output_dir"] = overrides.output_dir
    return Experiment(train=train, **raw), data


def cmd_train(args: argparse.Namespace) -> int:
    from mfwrap.train.baselines import run_experiment
    from mfwrap.train.data import load_data
    from mfwrap.train.metrics import format_table

    experiment, data = _load_run_config(args.config, args)
    spec = experiment.model.build_backbone().graph_spec
    train, val, test = load_data(data, spec)
    summary = run_experiment(experiment, data.fidelities, train, val, test, resume=args.resume)
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
    names = list(checkpoint.get("fidelity_names") or ["default"])
    if hasattr(model, "fidelity_index"):
        if requested is None and len(model.fidelity_names) > 1:
            raise SystemExit(f"this model has fidelities {list(model.fidelity_names)}: choose one with --fidelity")
        index = model.fidelity_index(requested)
        return requested, model.fidelity_names[index], index
    target = checkpoint.get("target_fidelity") or names[-1]
    name = requested or target
    if name not in names:
        raise SystemExit(f"fidelity {name!r} unknown to this checkpoint (it knows {names})")
    if name != target:
        raise SystemExit(f"this is a single-fidelity model of fidelity {target!r}; it does not predict {name!r}")
    return None, name, names.index(name)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mfwrap.data.readers import DEFAULT_KEYS, read_dataset, to_graphs
    from mfwrap.train.config import TrainConfig
    from mfwrap.train.metrics import format_table
    from mfwrap.model_file import read_model_file
    from mfwrap.train.trainer import Trainer

    model, checkpoint = read_model_file(args.checkpoint)
    _, name, index = _fidelity(model, checkpoint, args.fidelity)
    names = list(checkpoint.get("fidelity_names") or ["default"])
    keys = {target: getattr(args, f"{target}_key") for target in DEFAULT_KEYS}
    keys = {target: None if key.lower() == "none" else key for target, key in keys.items()}
    records = read_dataset(args.data, name, keys, strict=False)
    graphs = to_graphs(records, model.graph_spec, {name: index})
    config = TrainConfig(targets=checkpoint.get("targets", "efsm"), eval_batch_size=args.batch_size, device=args.device,
                         progress=False, output_dir=str(Path(args.checkpoint).parent))
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
    from mfwrap.predict import predict
    from mfwrap.model_file import read_model_file

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model, checkpoint = read_model_file(args.checkpoint, map_location=device)
    frames = _read_frames(args.structures)
    results = predict(model, frames, fidelity=_fidelity(model, checkpoint, args.fidelity)[0], batch_size=args.batch_size)
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
        print(f"{i:>5} {atoms.get_chemical_formula():<20} E = {result['energy']:.6f} eV "
              f"({result['energy'] / len(atoms):.6f} eV/atom)  max|F| = {np.abs(result['forces']).max():.4f} eV/Å")
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

        rows = plan_suite(experiments, args.level, args.seeds, backbone=args.backbone, root=args.root,
                          seconds_per_step=args.seconds_per_step)
        print(f"{'experiment':<20}{'runs':>6}{'trained':>9}{'steps':>10}{'pre-train':>11}{'s/step':>8}{'hours':>7}"
              f"{'done':>6}{'done h':>8}{'left h':>8}")
        total_hours = done_hours = left_hours = 0.0
        for name, r in rows.items():
            wall_hours = lambda steps: steps * r["seconds_per_step"] / max(args.jobs, 1) / 3600  # noqa: B023, E731
            hours, left = wall_hours(r["steps"] + r["pretrain_steps"]), wall_hours(r["left_steps"])
            total_hours += hours
            left_hours += left
            done_hours += r["done_wall_s"] / 3600
            rate = f"{r['seconds_per_step']:.2f}" + ("" if r["measured"] else "*")
            print(f"{name:<20}{r['runs']:>6}{r['trained']:>9}{r['steps']:>10}{r['pretrain_steps']:>11}{rate:>8}"
                  f"{hours:>7.1f}{r['done']:>6}{r['done_wall_s'] / 3600:>8.1f}{left:>8.1f}")
        print(f"total {total_hours:.1f} h with {args.jobs} run(s) at once, finished runs included; s/step measured on "
              f"the finished runs under {args.root} (* not measured: --seconds-per-step); done: runs finished there, "
              f"{done_hours:.1f} run-hours of wall time (one run's own; runs side by side overlap); left: at most "
              f"{left_hours:.1f} h for the runs not finished, with {args.jobs} at once (killed runs resume part-way)")
        return 0
    outcome = run_suite(experiments, args.level, args.seeds, args.root, jobs=args.jobs, backbone=args.backbone,
                        report=args.out, eager=args.eager)
    write_report(args.root, args.out)
    return 1 if outcome["failed"] else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mfwrap", description="Multi-fidelity interatomic potentials: train, evaluate, predict.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model from a YAML config", description=CONFIG_HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("config", help="YAML run config (sections described above)")
    train.add_argument("--resume", action="store_true",
                       help="continue from OUTPUT_DIR/<method>/last.pt if it exists (same config required); "
                            "the result equals an uninterrupted run")
    train.add_argument("--output-dir", default=None, help="overrides train.output_dir of the config")
    train.set_defaults(func=cmd_train)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("checkpoint", help="an mfwrap model file: a checkpoint of mfwrap train (best.pt, last.pt) or MultiFidelity.save")
        sub.add_argument("--fidelity", default=None, help="fidelity name; required for models with several fidelities")
        sub.add_argument("--batch-size", type=int, default=16, help="structures per forward pass (default 16)")
        sub.add_argument("--device", default="auto", help="auto (GPU if available), cpu, cuda, cuda:1, ... (default auto)")

    evaluate = commands.add_parser("evaluate", help="MAE / RMSE of a checkpoint on labelled structures")
    common(evaluate)
    evaluate.add_argument("data", help="labelled structures, any file ase.io.read reads (extxyz, ASE db, ...)")
    for target in ("energy", "forces", "stress", "magmoms"):
        evaluate.add_argument(f"--{target}-key", default=target,
                              help=f"calculator result / info / arrays key of the {target} label, 'none' if "
                                   f"unlabelled (default {target!r})")
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
        "bench", help="the benchmark suite: run an experiment (resumable) or write the report",
        description="Runs the seed paper's experiments (mfwrap.bench.grid) as one directory per run under --root, "
                    "skipping finished runs and resuming killed ones, then writes the report (mean ± sd over seeds, "
                    "tables, plots) to --out.")
    bench.add_argument("experiment", choices=[*EXPERIMENTS, "all", "report"])
    bench.add_argument("--level", choices=list(LEVELS), default="quick",
                       help="quick: pipeline check, minutes; medium: paper CHGNet on the shipped LMFP set, hours on a "
                            "2-core CPU; full: the paper's settings (a GPU)")
    bench.add_argument("--seeds", type=int, nargs="+", default=[0], help="data subset and initialisation seeds")
    needs = "".join(f"; {b.name} {b.note}" for b in BACKBONES.values() if b.note)
    bench.add_argument("--backbone", choices=list(BACKBONES), default=None,
                       help=f"override the experiment's backbone (mfwrap.bench.backbones{needs})")
    bench.add_argument("--jobs", type=int, default=1, help="runs at once, one process and one thread each")
    bench.add_argument("--plan", action="store_true",
                       help="print the runs and optimiser steps the experiment(s) take at this level, and the time "
                            "they take at --seconds-per-step; run nothing")
    bench.add_argument("--seconds-per-step", type=float, default=1.0,
                       help="for --plan, where no finished run measures it: wall seconds per optimiser step of one "
                            "run (1.0: paper CHGNet on LMFP, batch 4, compiled, one CPU thread, with evaluation, two "
                            "runs at once)")
    bench.add_argument("--eager", action="store_true",
                       help="eager training steps where the level compiles them (medium, full): for a torch on which "
                            "torch.compile of the training step fails (2.11 does; 2.13 is tested); results record it")
    bench.add_argument("--root", default="runs/suite", help="where the runs go (default runs/suite)")
    bench.add_argument("--out", default="benchmarks/results/suite", help="where the report goes")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command. Errors in what the user gave (files, configs, structures) print one line and
    exit with status 2; set MFWRAP_TRACEBACK=1 to see the traceback instead."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, KeyError) as error:
        if os.environ.get("MFWRAP_TRACEBACK"):
            raise
        parser.exit(2, f"mfwrap {args.command}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
