"""The learning rate of transfer's fine-tuning stage, measured on validation frames only.

    OMP_NUM_THREADS=1 python benchmarks/transfer_lr.py --jobs 2          # medium CHGNet, ~30 min on 2 cores
    python benchmarks/transfer_lr.py --level quick --seeds 0              # tiny CHGNet, a minute

``transfer`` (:mod:`mfwrap.train.baselines`) pre-trains the plain CHGNet on the low-fidelity frames,
then fine-tunes its output heads (embeddings and convolutions frozen) on N_high high-fidelity frames.
Per seed the pre-training stage (300 low-fidelity frames of the shipped small LMFP set, the paper's
lr 0.005, ``--pretrain-epochs``) is trained once and shared; the fine-tuning stage is then run at
each ``--lrs`` value for each ``--n-high`` (cosine schedule, batch 4, ``--epochs``), with the
suite's split (:mod:`mfwrap.datasets.registry`: the seed's first 10 high-fidelity frames validate,
the next N_high train). Everything reported is a validation error at the high fidelity (the test
frames are never evaluated): before fine-tuning (the pre-trained network with its composition model
refitted to the N_high energies, what fine-tuning starts from), at every epoch, at the epoch
best-on-validation picks and at the last epoch. Writes benchmarks/results/transfer_lr.json and
prints a table.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import time
from pathlib import Path

import torch

from mfwrap.bench.backbones import BACKBONES
from mfwrap.data import keys as K
from mfwrap.data.readers import to_graphs
from mfwrap.datasets.registry import Split, get_dataset
from mfwrap.mechanisms.composition_fit import fit_composition
from mfwrap.model_file import read_payload
from mfwrap.train.baselines import Experiment, initial_backbone, run_experiment
from mfwrap.train.config import TrainConfig
from mfwrap.train.trainer import Trainer

RESULTS = Path(__file__).parent / "results" / "transfer_lr.json"
PAPER_LR = 0.005
N_VAL = 10
TARGETS = ("energy", "forces", "stress", "magmoms")


def _at_high(metrics: dict) -> dict[str, float]:
    """{target: MAE} at the high fidelity of a metrics dict {fidelity: {target: {"mae", ...}}}."""
    return {t: stats["mae"] for t, stats in metrics.get("high", {}).items()}


def _validation_by_epoch(run_dir: Path) -> list[dict[str, float]]:
    """The fine-tuning stage's validation MAE per target at the high fidelity, one dict per epoch."""
    history = json.loads((run_dir / "transfer" / "metrics.json").read_text())["history"]
    epochs: dict[int, dict[str, float]] = {}
    for row in history:
        if row["split"] == "val" and row["fidelity"] == "high":
            epochs.setdefault(row["epoch"], {})[row["target"]] = row["mae"]
    return [epochs[e] for e in sorted(epochs)]


def one_seed(seed: int, args: argparse.Namespace) -> list[dict]:
    """Every (N_high, lr) fine-tuning of one seed, sharing one pre-training stage."""
    torch.set_num_threads(1)
    kwargs = BACKBONES["chgnet"].kwargs_at(args.level)
    dataset = get_dataset("lmfp")
    work = Path(args.work) / f"{args.level}_s{seed}"
    shared_pretrain: Path | None = None
    records = []
    for n_high in args.n_high:
        splits = dataset.split(Split(size="small", seed=seed, n_high=n_high, n_val=N_VAL))
        for lr in args.lrs:
            run_dir = work / f"nh{n_high}_lr{lr:g}"
            config = TrainConfig(epochs=args.epochs, batch_size=4, lr=lr, seed=seed, output_dir=str(run_dir))
            experiment = Experiment(
                method="transfer",
                model={"backbone": BACKBONES["chgnet"].class_path, "kwargs": kwargs},
                train=config,
                pretrain={"epochs": args.pretrain_epochs, "lr": PAPER_LR},
            )
            if shared_pretrain is not None and not (run_dir / "pretrain").exists():
                shutil.copytree(shared_pretrain, run_dir / "pretrain")  # resumes as a finished stage
            backbone = initial_backbone(experiment)
            names = list(dataset.fidelities)
            train = to_graphs(splits.train_low + splits.train_high, backbone.graph_spec, names)
            val = to_graphs(splits.val, backbone.graph_spec, names)
            started = time.perf_counter()
            summary = run_experiment(experiment, names, train, val, resume=True, backbone=backbone)
            seconds = time.perf_counter() - started
            shared_pretrain = shared_pretrain or run_dir / "pretrain"
            records.append(
                {
                    "seed": seed,
                    "n_high": n_high,
                    "lr": lr,
                    "before": _before_fine_tuning(experiment, run_dir, train, val, names),
                    "by_epoch": _validation_by_epoch(run_dir),
                    "best_epoch": summary["best"]["epoch"],
                    "best": _at_high(summary["val"]),
                    "steps": summary["steps"],
                    "wall_s": seconds,
                }
            )
            print(
                f"seed {seed} N_high {n_high} lr {lr:g}: energy MAE before {records[-1]['before']['energy']:.3g}, "
                f"best {records[-1]['best']['energy']:.3g}, last {records[-1]['by_epoch'][-1]['energy']:.3g} "
                f"meV/atom ({seconds:.0f} s)",
                flush=True,
            )
    return records


def _before_fine_tuning(experiment: Experiment, run_dir: Path, train: list, val: list, names: list) -> dict:
    """Validation MAE of what fine-tuning starts from: the pre-training stage's best network with its
    composition model refitted to the target fidelity's training energies (as fine-tuning does)."""
    model = experiment.model.build_backbone()
    model.load_state_dict(read_payload(run_dir / "pretrain" / "best.pt")["state_dict"])
    high = [g for g in train if int(g[K.FIDELITY]) == names.index("high")]
    fit_composition(model, high)
    config = TrainConfig(output_dir=str(run_dir / "before"), target_fidelity="high")
    return _at_high(Trainer(model, config, fidelity_names=names).evaluate(val))


def summarise(records: list[dict]) -> list[dict]:
    """Per (N_high, lr): seed means of the validation energy / forces MAE before, at the best and at
    the last epoch, the largest epoch-to-epoch change of the energy MAE, and how many seeds end worse
    than they started (last epoch's energy MAE above the one before fine-tuning)."""
    rows = []
    for n_high in sorted({r["n_high"] for r in records}):
        for lr in sorted({r["lr"] for r in records}, reverse=True):
            runs = [r for r in records if r["n_high"] == n_high and r["lr"] == lr]
            if not runs:
                continue
            row = {"n_high": n_high, "lr": lr, "seeds": len(runs)}
            for target in ("energy", "forces"):
                row[f"{target}_before"] = statistics.mean(r["before"][target] for r in runs)
                row[f"{target}_best"] = statistics.mean(r["best"][target] for r in runs)
                row[f"{target}_last"] = statistics.mean(r["by_epoch"][-1][target] for r in runs)
            row["energy_max_jump"] = max(
                abs(b["energy"] - a["energy"]) for r in runs for a, b in zip(r["by_epoch"], r["by_epoch"][1:])
            )
            row["ends_worse"] = sum(r["by_epoch"][-1]["energy"] > r["before"]["energy"] for r in runs)
            rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    header = (
        f"{'N_high':>6} {'lr':>7} {'seeds':>5} | {'E before':>9} {'E best':>8} {'E last':>8} {'max jump':>9} "
        f"{'worse':>5} | {'F before':>9} {'F best':>8} {'F last':>8}"
    )
    print("validation MAE at the high fidelity: energy (E) meV/atom, forces (F) meV/Å; seed means")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['n_high']:>6} {r['lr']:>7g} {r['seeds']:>5} | {r['energy_before']:>9.3g} {r['energy_best']:>8.3g} "
            f"{r['energy_last']:>8.3g} {r['energy_max_jump']:>9.3g} {r['ends_worse']:>5} | "
            f"{r['forces_before']:>9.3g} {r['forces_best']:>8.3g} {r['forces_last']:>8.3g}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--level", choices=("quick", "medium"), default="medium", help="the suite's CHGNet size")
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.005, 0.002, 0.001, 0.0005])
    parser.add_argument("--n-high", type=int, nargs="+", default=[10, 25])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs (the medium level's)")
    parser.add_argument("--pretrain-epochs", type=int, default=10, help="pre-training epochs (the medium level's)")
    parser.add_argument("--jobs", type=int, default=1, help="seeds trained at once, one thread each")
    parser.add_argument("--work", default="runs/transfer_lr", help="where the runs go (resumed when rerun)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--note", help="recorded with the results (e.g. what else ran on the machine)")
    args = parser.parse_args()
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        records = [r for seed_records in pool.map(one_seed, args.seeds, [args] * len(args.seeds)) for r in seed_records]
    rows = summarise(records)
    print_table(rows)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": 1,
        "cpu_count": os.cpu_count(),
        "level": args.level,
        "backbone_kwargs": BACKBONES["chgnet"].kwargs_at(args.level),
        "dataset": "lmfp small",
        "n_val": N_VAL,
        "epochs": args.epochs,
        "pretrain": {"epochs": args.pretrain_epochs, "lr": PAPER_LR},
        "wall_s": time.perf_counter() - started,
        "summary": rows,
        "runs": records,
        **({"note": args.note} if args.note else {}),
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
