"""``mfwrap bench``: run the benchmark suite's experiments (resumable), plan them, or write the report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def cmd_bench(args: argparse.Namespace) -> int:
    from mfwrap.bench.grid import EXPERIMENTS
    from mfwrap.bench.report import warn_old_layout, write_report, write_reports

    if args.experiment == "foundation":
        from mfwrap.bench.foundation_runs import run

        return run(args)
    if args.experiment == "report":
        for path in write_reports(args.root, args.out, args.level, args.force):
            print(path)
        return 0
    level = args.level or "quick"
    root, out = Path(args.root) / level, Path(args.out) / level  # each level its own folders
    if Path(args.root).is_dir():
        warn_old_layout(Path(args.root))
    cluster = _cluster_options(args)
    if args.experiment == "status":
        return _status(args, level, root, out, cluster)
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
    outcome = _run_suite(args, experiments, level, root, cluster, report=out)
    if cluster is not None and args.no_wait:
        return 0
    write_report(root, out, args.force)
    return 1 if outcome["failed"] else 0


def _cluster_options(args: argparse.Namespace):
    """The cluster options of ``args`` (None: --executor local)."""
    if args.executor == "local":
        return None
    from mfwrap.bench.cluster import ClusterOptions

    return ClusterOptions(
        executor=args.executor,
        folder=args.submitit_folder or str(Path(args.root) / "submitit"),
        partition=args.partition,
        gpus_per_job=args.gpus_per_job,
        runs_per_gpu=args.runs_per_gpu,
        time_min=args.time,
        mem_gb=args.mem,
        cpus_per_run=args.cpus_per_run,
        max_parallel=args.max_parallel,
    )


def _status(args: argparse.Namespace, level: str, root: Path, out: Path, cluster) -> int:
    """``mfwrap bench status``: done / running / stale / failed / pending per experiment; with
    --resubmit-failed, train the failed and stale runs again (through --executor)."""
    from mfwrap.bench.cluster import status, status_text
    from mfwrap.bench.grid import EXPERIMENTS, LEVELS

    extra = {"backbone": args.backbone} if args.backbone else {}
    specs = [spec for name in EXPERIMENTS for spec in EXPERIMENTS[name](LEVELS[level], list(args.seeds), **extra)]
    specs = list({spec.name + spec.experiment: spec for spec in specs}.values())
    found = status(specs, root)
    print(f"{root} (level {level}, seeds {' '.join(map(str, args.seeds))}):")
    print(status_text(found))
    if not args.resubmit_failed:
        return 0
    again = {name for states in found.values() for state in ("failed", "stale") for name, _ in states[state]}
    if not again:
        print("nothing to resubmit: no failed or stale runs")
        return 0
    experiments = [e for e, states in found.items() if states["failed"] or states["stale"]]
    outcome = _run_suite(args, experiments, level, root, cluster, only=sorted(again))
    return 1 if outcome["failed"] else 0


def _run_suite(args: argparse.Namespace, experiments: list[str], level: str, root: Path, cluster, **extra) -> dict:
    """:func:`mfwrap.bench.runner.run_suite` with the command's seeds, jobs, backbone, eager and cluster options."""
    from mfwrap.bench.runner import run_suite

    return run_suite(
        experiments,
        level,
        args.seeds,
        root,
        jobs=args.jobs,
        backbone=args.backbone,
        eager=args.eager,
        cluster=cluster,
        wait=not args.no_wait,
        **extra,
    )


def add_bench_parser(commands: Any) -> None:
    """The ``bench`` subcommand."""
    from mfwrap.bench.backbones import BACKBONES
    from mfwrap.bench.grid import EXPERIMENTS, LEVELS

    bench = commands.add_parser(
        "bench",
        help="the benchmark suite: run an experiment (resumable) or write the report",
        description="Runs the seed paper's experiments (mfwrap.bench.grid) as one directory per run under "
        "--root/<level>, skipping finished runs and resuming killed ones, then writes the report (mean ± sd over "
        "seeds, tables, plots) to --out/<level>.",
    )
    bench.add_argument(
        "experiment",
        choices=[*EXPERIMENTS, "all", "report", "status", "foundation"],
        help="an experiment of the suite (at --level), all of them, report, status (done / running / stale / "
        "failed / pending runs of every experiment at --level and --seeds under --root), or foundation: a "
        "pretrained model gains a fidelity (its own options below; results in OUT/foundation.json)",
    )
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
    cluster = bench.add_argument_group("cluster (mfwrap.bench.cluster: submitit)")
    cluster.add_argument(
        "--executor",
        choices=["local", "slurm", "submitit-local"],
        default="local",
        help="local (default): --jobs processes here; slurm: one job array of the runs to train (each task "
        "GPUS-PER-JOB x RUNS-PER-GPU runs side by side); submitit-local: the same path through submitit's local "
        "executor, on this machine",
    )
    cluster.add_argument("--partition", default=None, help="Slurm partition (default: the cluster's)")
    cluster.add_argument("--gpus-per-job", type=int, default=1, help="GPUs per array task (0: CPU tasks)")
    cluster.add_argument("--runs-per-gpu", type=int, default=1, help="runs side by side per GPU (per CPU task)")
    cluster.add_argument("--time", type=int, default=240, help="time limit per task, minutes (runs resume after it)")
    cluster.add_argument("--mem", type=float, default=None, help="memory per task, GB (default: the partition's)")
    cluster.add_argument("--cpus-per-run", type=int, default=1, help="CPU cores per run")
    cluster.add_argument("--max-parallel", type=int, default=None, help="array tasks at once (default: no limit)")
    cluster.add_argument(
        "--submitit-folder", default=None, help="submitit's job files and logs (default ROOT/submitit)"
    )
    cluster.add_argument(
        "--no-wait", action="store_true", help="submit and return; `mfwrap bench status` and `report` follow up"
    )
    cluster.add_argument(
        "--resubmit-failed", action="store_true", help="with status: train the failed and stale runs again"
    )
    from mfwrap.bench.foundation_runs import add_arguments

    add_arguments(bench)
    bench.set_defaults(func=cmd_bench)
