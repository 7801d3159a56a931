"""SevenNet's own multi-fidelity design against SevenNet wrapped by mfwrap (ECMR), and single-fidelity SevenNet.

Three models of one SevenNet architecture (``--channel`` channels, ``--lmax``, ``--layers``
interaction layers, cutoff 5 Å, elements Li Mn Fe P O) on the same LMFP frames and splits
(``load_lmfp("small", 0)`` split by :func:`mfwrap.bench.runner.make_splits`: the seed shuffles each
split, the first ``--n-val`` high-fidelity training frames validate, the next ``--n-high`` train,
with all 300 low-fidelity frames; the 50 high-fidelity test frames), the same trainer
(:class:`mfwrap.train.Trainer`: Huber loss on energy per atom, forces, stress weighted 1 : 1 : 0.1,
Adam, lr 0.005 with a cosine schedule, batch 4, best epoch on validation) and the same number of
optimiser steps (up to one batch):

* ``sevenn_multimodal``: SevenNet's multi-modal model as in SevenNet-MF-0
  (:class:`backbones.sevenn.MultiModalSevenNet`, modalities low/high = the fidelity index): the
  modality one-hot appended to the ``0e`` inputs of every self-interaction linear (before and after
  each convolution) and of the first readout linear, one energy shift per modality and element
  μ_{m,Z}, fitted by least squares; trained as a bare backbone on both fidelities;
* ``mfwrap_ECMR``: ``MultiFidelity(SevenNet(...), ["low", "high"], "ECMR")`` on both fidelities;
* ``single_fidelity``: ``SevenNet(...)`` with a per-element shift μ_Z fitted on the high-fidelity
  frames, trained on those only.

All three share sevenn's data-derived constants, taken from the high-fidelity training frames: the
convolution denominator (mean number of neighbours within the cutoff) and the energy scale σ
(force RMS, eV/Å; ``E_i = σ y_i + μ``). Not used: SevenNet-MF-0's 7× loss weight on its
high-fidelity data (``--high-weight`` sets one for both multi-fidelity models).

Printed: a markdown table of high-fidelity test MAE (RMSE) of energy (meV/atom), forces (meV/Å),
stress (GPa), seconds per optimiser step (training steps only), parameters, steps. Written:
``benchmarks/results/sevenn_mf.json`` (with machine, threads, load average: a shared CPU is said so).

Run: ``OMP_NUM_THREADS=1 python benchmarks/sevenn_mf.py`` (about 15–25 min on one CPU thread);
``--quick`` is a smoke test (a minute). Needs ``sevenn`` (``pip install mfwrap[sevenn]``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from timed_trainer import TimedTrainer

from backbones.sevenn import MultiModalSevenNet, SevenNet
from mfwrap import MultiFidelity
from mfwrap.bench.grid import LEVELS, RunSpec
from mfwrap.bench.runner import make_splits
from mfwrap.data import keys as K
from mfwrap.data.graph import GraphSpec
from mfwrap.data.readers import to_graphs
from mfwrap.train import TrainConfig

FIDELITIES = ["low", "high"]
ELEMENTS = ["Li", "Mn", "Fe", "P", "O"]
BATCH_SIZE = 4
UNITS = {"energy": "meV/atom", "forces": "meV/Å", "stress": "GPa"}


def statistics(graphs) -> tuple[float, float]:
    """(mean number of neighbours per atom within the cutoff, force RMS in eV/Å) of labelled graphs."""
    edges = sum(int(g[K.EDGE_INDEX].shape[1]) for g in graphs)
    atoms = sum(int(g[K.ATOMIC_NUMBERS].shape[0]) for g in graphs)
    forces = torch.cat([g[K.FORCES][g[K.mask_key(K.FORCES)]] for g in graphs])
    return edges / atoms, float(forces.pow(2).mean().sqrt())


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    spec = RunSpec(
        "sevenn_mf", "multi_fidelity", args.n_high, args.n_low, "equal_compute", args.seed, backbone="sevenn"
    )
    splits = make_splits(spec, dataclasses.replace(LEVELS["medium"], n_val=args.n_val))
    graphs = lambda records: to_graphs(records, GraphSpec(cutoff=args.cutoff), FIDELITIES)  # noqa: E731
    high, low, val, test = (
        graphs(r) for r in (splits.train_high, splits.train_low, splits.val, splits.test[: args.n_test])
    )
    neighbours, force_rms = statistics(high)
    sizes = {
        "chemical_species": ELEMENTS,
        "channel": args.channel,
        "lmax": args.lmax,
        "num_convolution_layer": args.layers,
        "cutoff": args.cutoff,
        "weight_nn_hidden_neurons": [args.radial_hidden] * 2,
        "conv_denominator": neighbours,
        "scale": force_rms,
    }
    mf_steps = math.ceil((len(high) + len(low)) / BATCH_SIZE)
    sf_steps = math.ceil(len(high) / BATCH_SIZE)
    sf_epochs = max(1, round(args.epochs * mf_steps / sf_steps))
    weights = {"fidelity_loss_weights": {"high": args.high_weight}} if args.high_weight != 1.0 else {}
    runs = {  # name: (build, training graphs, epochs, extra TrainConfig options)
        "sevenn_multimodal": (
            lambda: MultiModalSevenNet(**sizes, modalities=FIDELITIES, shift=0.0),
            low + high,
            args.epochs,
            weights,
        ),
        "mfwrap_ECMR": (lambda: MultiFidelity(SevenNet(**sizes), FIDELITIES, "ECMR"), low + high, args.epochs, weights),
        "single_fidelity": (lambda: SevenNet(**sizes, shift=[0.0] * len(ELEMENTS)), high, sf_epochs, {}),
    }
    print(
        f"{len(high)} high + {len(low)} low training, {len(val)} validation, {len(test)} test frames; "
        f"{args.epochs} epochs x {mf_steps} steps (multi-fidelity) vs {sf_epochs} x {sf_steps} (single); "
        f"{neighbours:.1f} neighbours/atom, force RMS {force_rms:.3f} eV/Å",
        flush=True,
    )
    results = {}
    for name, (build, train, epochs, options) in runs.items():
        torch.manual_seed(args.seed)
        model = build()
        with tempfile.TemporaryDirectory() as out:
            config = TrainConfig(
                targets="efs",
                epochs=epochs,
                batch_size=BATCH_SIZE,
                lr=args.lr,
                seed=args.seed,
                output_dir=out,
                progress=False,
                **options,
            )
            trainer = TimedTrainer(model, config, fidelity_names=FIDELITIES)
            start = time.perf_counter()
            summary = trainer.fit(train, val, test)
            total = time.perf_counter() - start
        metrics = summary["test"]["high"]
        results[name] = {
            **{f"{t}_{kind}": metrics[t][kind] for t in UNITS for kind in ("mae", "rmse")},
            "seconds_per_step": trainer.step_seconds / summary["steps"],
            "steps": summary["steps"],
            "epochs": epochs,
            "best_epoch": summary["best"]["epoch"],
            "parameters": sum(p.numel() for p in model.parameters()),
            "total_seconds": total,
        }
        print(f"{name}: {results[name]}", flush=True)
    load_end = os.getloadavg()
    cores = os.cpu_count() or 1
    return {
        "data": f"LMFP small seed 0 (make_splits, seed {args.seed}): {len(low)} low + {len(high)} high training, "
        f"{len(val)} high validation, {len(test)} high test frames",
        "protocol": f"same optimiser steps: {args.epochs} epochs of {mf_steps} steps (multi-fidelity models) vs "
        f"{sf_epochs} epochs of {sf_steps} steps (single-fidelity); batch {BATCH_SIZE}, lr {args.lr} cosine",
        "architecture": {**sizes, "conv_denominator": round(neighbours, 3), "scale": round(force_rms, 4)},
        "options": vars(args),
        "results": results,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": cores,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "sevenn": _version("sevenn"),
            "load_average_start": [round(x, 2) for x in load_start],
            "load_average_end": [round(x, 2) for x in load_end],
            "cpu_shared": max(load_start[0], load_end[0]) > 1.5 * args.threads,
        },
    }


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def table(result: dict) -> str:
    """The markdown table of the high-fidelity test errors, MAE (RMSE), speed and size."""
    lines = [
        "| model | energy (meV/atom) | forces (meV/Å) | stress (GPa) | s/step | parameters | steps |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in result["results"].items():
        errors = " | ".join(
            f"{r[f'{t}_mae']:.{3 if t == 'stress' else 1}f} ({r[f'{t}_rmse']:.{3 if t == 'stress' else 1}f})"
            for t in UNITS
        )
        lines.append(f"| {name} | {errors} | {r['seconds_per_step']:.3f} | {r['parameters']:,} | {r['steps']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-high", type=int, default=25)
    parser.add_argument("--n-low", type=int, default=None, help="low-fidelity training frames (default: all 300)")
    parser.add_argument("--n-val", type=int, default=10)
    parser.add_argument("--n-test", type=int, default=50)
    parser.add_argument(
        "--epochs", type=int, default=8, help="multi-fidelity epochs; single-fidelity gets the same steps"
    )
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument(
        "--high-weight", type=float, default=1.0, help="loss weight of high-fidelity frames (MF models)"
    )
    parser.add_argument("--channel", type=int, default=32)
    parser.add_argument("--lmax", type=int, default=1)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--radial-hidden", type=int, default=32)
    parser.add_argument("--cutoff", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: 4 + 8 frames, 8 channels, 1 epoch, 4 test frames"
    )
    parser.add_argument("--out", default="benchmarks/results/sevenn_mf.json")
    args = parser.parse_args()
    if args.quick:
        args.n_high, args.n_low, args.n_val, args.n_test, args.epochs, args.channel = 4, 8, 2, 4, 1, 8
    result = run(args)
    if not args.quick:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    machine = result["machine"]
    print(result["data"])
    print(result["protocol"])
    print(
        f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['threads']} thread(s), "
        f"torch {machine['torch']}, sevenn {machine['sevenn']}; "
        f"load average {machine['load_average_start'][0]} -> {machine['load_average_end'][0]}"
        + (" (CPU shared with other jobs: speeds are indicative)" if machine["cpu_shared"] else "")
    )
    print(table(result))


if __name__ == "__main__":
    main()
