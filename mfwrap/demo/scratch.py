"""``python -m mfwrap.demo --scratch``: multi-fidelity vs single-fidelity CHGNet from scratch on the small
LMFP set, on a CPU (the seed paper's question; ``make demo`` runs :mod:`mfwrap.demo.foundation`).
 The small two-fidelity LMFP dataset
(:mod:`mfwrap.datasets.lmfp`; ships prebuilt with the package) has 100 high-fidelity training
frames (CHGNet r2SCAN labels: energy, forces, stress, magmoms), 300 low-fidelity frames (CHGNet
0.3.0 labels: energy, forces, stress, no magmoms) on other structures, and 50 high-fidelity test
frames; ``--n-high`` / ``--n-low`` of them are drawn as the benchmark suite draws a run's frames
(:mod:`mfwrap.datasets.registry`, seeded by ``--seed``). Two CHGNet models with the seed paper's
architecture, trained from scratch with the same hyperparameters and seed:

* multi-fidelity: ``MultiFidelity(CHGNet(), ["low", "high"], "ECMR")`` on all 400 frames;
* single-fidelity: ``CHGNet()`` on the 100 high-fidelity frames only.

The comparison is at equal compute by default: single-fidelity trains for as many optimiser
steps as multi-fidelity takes in ``--epochs`` epochs over its four times larger training set
(:func:`mfwrap.bench.grid.in_own_epochs`, as the suite's ``equal_compute`` protocol;
``--protocol paper``: the same epochs instead, which gives multi-fidelity four times the steps;
the printed table names the protocol and both step counts). The two trainings run at once, one
process and one thread each (one thread per process is faster than two for this model on a
CPU). Each run replaces the previous demo's models under ``--out``. Prints their high-fidelity
test errors side by side and saves a parity plot (PNG). The
budget is a few minutes, so absolute errors are far from converged; ``mfwrap bench`` runs the
seed paper's experiments.

    python -m mfwrap.demo --scratch [--epochs 2] [--protocol equal-compute|paper] [--high-share 0.5]
        [--out runs/demo] [--jobs 2]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import multiprocessing
import time
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Batch

from mfwrap.bench.grid import in_own_epochs
from mfwrap.data import keys as K
from mfwrap.data.readers import to_graphs
from mfwrap.datasets.registry import Split, Splits, get_dataset
from mfwrap.files import write_text
from mfwrap.model_file import read_model_file
from mfwrap.physics import energy_and_derivatives
from mfwrap.train.baselines import Experiment, ModelConfig, initial_backbone, run_experiment
from mfwrap.train.config import TrainConfig
from mfwrap.train.metrics import format_table

FIDELITIES = ["low", "high"]  # graph fidelity index = position here
RUNS = {"multi-fidelity": "multi_fidelity", "single-fidelity": "single_fidelity"}
BATCH = TrainConfig().batch_size


def _splits(args: argparse.Namespace) -> Splits:
    """The LMFP frames of the demo: the registry's split rule (the suite's) with ``--seed``."""
    splits = get_dataset("lmfp").split(Split(size=args.size, seed=args.seed, n_high=args.n_high, n_low=args.n_low))
    splits.test = splits.test[: args.n_test]
    return splits


def _predictions(checkpoint: Path, records: list) -> dict[str, np.ndarray]:
    """Energy per atom (eV/atom) and force components (eV/Å), predicted and labelled, on ``records``."""
    model, _ = read_model_file(checkpoint)
    model.eval()
    graphs = to_graphs(records, model.graph_spec, FIDELITIES)
    pred_e, true_e, pred_f, true_f = [], [], [], []
    for start in range(0, len(graphs), 16):
        batch = Batch.from_data_list(graphs[start : start + 16])
        out = energy_and_derivatives(model, batch, stress=False)
        atoms = torch.bincount(batch.batch).double()
        pred_e.append(out[K.ENERGY].detach().double() / atoms)
        true_e.append(batch[K.ENERGY].double() / atoms)
        pred_f.append(out[K.FORCES].detach().flatten())
        true_f.append(batch[K.FORCES].flatten())
    cat = lambda xs: torch.cat(xs).numpy()  # noqa: E731
    return {"pred_e": cat(pred_e), "true_e": cat(true_e), "pred_f": cat(pred_f), "true_f": cat(true_f)}


def parity_plot(predictions: dict[str, dict[str, np.ndarray]], path: Path) -> None:
    """Energy-per-atom and force parity, one colour per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    for (name, p), colour in zip(predictions.items(), ("tab:orange", "tab:blue")):
        e_mae = 1000 * np.abs(p["pred_e"] - p["true_e"]).mean()
        f_mae = 1000 * np.abs(p["pred_f"] - p["true_f"]).mean()
        axes[0].scatter(
            p["true_e"], p["pred_e"], s=12, alpha=0.7, color=colour, label=f"{name} (MAE {e_mae:.0f} meV/atom)"
        )
        axes[1].scatter(p["true_f"], p["pred_f"], s=3, alpha=0.3, color=colour, label=f"{name} (MAE {f_mae:.0f} meV/Å)")
    for ax, (label, unit) in zip(axes, (("energy", "eV/atom"), ("force component", "eV/Å"))):
        low, high = ax.get_xlim()
        ax.plot([low, high], [low, high], "k--", lw=0.8)
        ax.set_xlabel(f"r2SCAN-teacher {label} ({unit})")
        ax.set_ylabel(f"predicted {label} ({unit})")
        ax.legend(fontsize=8)
    fig.suptitle("LMFP high-fidelity test set: multi-fidelity vs single-fidelity CHGNet")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _train(method: str, args: argparse.Namespace, threads: int) -> tuple[dict, float]:
    """Train one model (in its own process when the runs go in parallel); (test metrics, seconds)."""
    torch.set_num_threads(threads)
    start = time.perf_counter()
    epochs = args.single_epochs if method == "single_fidelity" else args.epochs
    sampling = (
        {"low": 1.0 - args.high_share, "high": args.high_share}
        if method == "multi_fidelity" and args.high_share is not None
        else {}
    )
    config = TrainConfig(
        epochs=epochs,
        seed=args.seed,
        val_fraction=0.0,
        output_dir=str(args.out),
        progress=args.jobs == 1,
        compile=args.compile,
        fidelity_sampling=sampling,
    )
    experiment = Experiment(
        method=method, model=ModelConfig(backbone="backbones.chgnet:CHGNet", mechanisms="ECMR"), train=config
    )
    backbone = initial_backbone(experiment)
    splits = _splits(args)
    high = splits.train_high * (args.high_repeat if method == "multi_fidelity" else 1)  # each k times per epoch
    graphs = lambda records: to_graphs(records, backbone.graph_spec, FIDELITIES)  # noqa: E731
    summary = run_experiment(
        experiment,
        FIDELITIES,
        graphs(splits.train_low + high),
        None,
        graphs(splits.test),
        overwrite=True,  # the demo's own runs
        backbone=backbone,
    )
    return summary["test"], time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m mfwrap.demo --scratch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--epochs", type=int, default=2, help="training epochs of each model (default 2)")
    parser.add_argument(
        "--protocol",
        choices=("equal-compute", "paper"),
        default="equal-compute",
        help="equal-compute (default): single-fidelity trains for as many optimiser steps as "
        "multi-fidelity takes in --epochs; paper: both train --epochs epochs (multi-fidelity then "
        "takes (N_high + N_low) / N_high times the steps)",
    )
    parser.add_argument(
        "--single-epochs", type=int, default=None, help="epochs of the single-fidelity model, overriding --protocol"
    )
    parser.add_argument(
        "--high-repeat",
        type=int,
        default=1,
        help="multi-fidelity only: each high-fidelity training frame appears this many times per "
        "epoch (default 1), so that a budget of few epochs still sees the scarce frames often",
    )
    parser.add_argument(
        "--high-share",
        type=float,
        default=None,
        help="multi-fidelity only: share of each epoch's draws from the high fidelity (train option "
        "fidelity_sampling; default: the data's own share). 0.5 helped on LMFP in the suite's "
        "mf_options experiment at no extra compute",
    )
    parser.add_argument("--n-high", type=int, default=100, help="high-fidelity training frames (default 100)")
    parser.add_argument("--n-low", type=int, default=None, help="low-fidelity training frames (default: all)")
    parser.add_argument("--n-test", type=int, default=None, help="high-fidelity test frames (default: all)")
    parser.add_argument("--size", default="small", help="LMFP variant: small (default) or full")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the frames drawn (the suite's split rule) and of training (default 0)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=2,
        choices=(1, 2),
        help="2 (default): train both models at once, one process and one thread each; "
        "1: one after the other with --threads threads",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads with --jobs 1 (default 1)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="compiled training steps (torch.compile): 1.6-1.7x the step rate on one thread, after a compile of a few "
        "minutes on a fresh machine (seconds once inductor's cache is warm)",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output directory (default runs/demo)")
    args = parser.parse_args(argv)
    if args.high_share is not None and not 0.0 < args.high_share < 1.0:
        parser.error(f"--high-share must be between 0 and 1, got {args.high_share}")
    start = time.perf_counter()
    origin = "ships prebuilt" if args.size == "small" else "labelled by the teachers on first use, then cached"
    print(f"loading the {args.size} LMFP dataset ({origin}) ...", flush=True)
    splits = _splits(args)
    n_high, test = len(splits.train_high), splits.test
    n_mf = len(splits.train_low) + n_high * args.high_repeat
    steps_mf = args.epochs * math.ceil(n_mf / BATCH)
    if args.single_epochs is None:
        equal = in_own_epochs(args.epochs, n_mf, n_high, BATCH)  # the single-fidelity epochs of MF's steps
        args.single_epochs = args.epochs if args.protocol == "paper" else equal
    else:
        args.protocol = "custom"
    steps_sf = args.single_epochs * math.ceil(n_high / BATCH)
    protocol = (
        f"protocol {args.protocol}: multi-fidelity {args.epochs} epoch(s) over {n_mf} frames = {steps_mf} "
        f"optimiser steps; single-fidelity {args.single_epochs} epoch(s) over {n_high} frames = "
        f"{steps_sf} steps"
    )
    if args.high_share is not None:
        protocol += f"; multi-fidelity draws {args.high_share:.0%} of each epoch from the high fidelity"
    print(f"  ready after {time.perf_counter() - start:.0f} s; training both models ({protocol}) ...", flush=True)

    if args.jobs == 2:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as pool:
            futures = {name: pool.submit(_train, method, args, 1) for name, method in RUNS.items()}
            outcomes = {name: future.result() for name, future in futures.items()}
    else:
        outcomes = {name: _train(method, args, args.threads) for name, method in RUNS.items()}
    results = {name: metrics for name, (metrics, _) in outcomes.items()}
    timings = {name: seconds for name, (_, seconds) in outcomes.items()}

    print(f"\nhigh-fidelity test errors ({len(test)} frames, seed {args.seed}, CPU; {protocol}):")
    print(format_table(results, "high"))
    predictions = {name: _predictions(args.out / method / "best.pt", test) for name, method in RUNS.items()}
    plot = args.out / "parity.png"
    parity_plot(predictions, plot)
    summary = {
        "protocol": args.protocol,
        "steps": {"multi-fidelity": steps_mf, "single-fidelity": steps_sf},
        "epochs": args.epochs,
        "single_fidelity_epochs": args.single_epochs,
        "multi_fidelity_high_repeat": args.high_repeat,
        "multi_fidelity_high_share": args.high_share,
        "seed": args.seed,
        "size": args.size,
        "n_high": args.n_high,
        "n_low": args.n_low,
        "n_test": len(test),
        "test": results,
        "train_seconds": timings,
        "total_seconds": time.perf_counter() - start,
        "jobs": args.jobs,
        "compile": args.compile,
    }
    write_text(args.out / "demo.json", json.dumps(summary, indent=1))
    print(f"\nparity plot: {plot}\nsummary: {args.out / 'demo.json'}  (total {summary['total_seconds']:.0f} s)")
    return summary
