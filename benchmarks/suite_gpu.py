"""The benchmark suite on a GPU: real medium-level runs trained on CUDA, alone and several at once.

    python benchmarks/suite_gpu.py [--root /tmp/suite_gpu] [--at-once 4] [--out benchmarks/results/suite_gpu.json]

Each run is exactly the suite's (``mfwrap.bench.runner.run_one``: same splits, epochs, compiled
steps unless ``--eager``, evaluation), in its own process with one CPU thread, the trainer's
``device: auto`` picking the GPU. Phase "alone": LMFP CHGNet MF (ECMR) at N_high = 25, paper
protocol, seed 0. Phase "at once": ``--at-once`` runs side by side on the one GPU (single-fidelity
equal compute at N_high = 25, seeds 0, 1, 2, and MF seed 1, repeated as needed). Reported per run:
optimiser steps, wall seconds, the seconds the first (compiling) step took (the trainer's
``compile_seconds``), seconds per step with and without it, and the high-fidelity test MAE next
to the same run's on the CPU (``benchmarks/results/suite/medium/learning_curve.json``; the two differ by
float summation order and the GPU's kernels, not by data or seed). Then the full level's plan
(``mfwrap bench all --level full --seeds 0 1 2 --plan``) at the rates measured: one run at a time,
and ``--at-once`` at a time (aggregate steps per second).
Writes the JSON after every phase; without CUDA it says so and measures nothing.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
CPU_RESULTS = REPO / "benchmarks" / "results" / "suite" / "medium" / "learning_curve.json"
RUN_ONE = (
    "import json, sys, torch; torch.set_num_threads(1); from mfwrap.bench.grid import RunSpec; "
    "from mfwrap.bench.runner import run_one; "
    "run_one(RunSpec(**json.loads(sys.argv[1])), 'medium', sys.argv[2], eager=sys.argv[3] == 'eager')"
)
TARGETS = ("energy", "forces", "stress", "magmoms")


def spec(method: str, protocol: str, seed: int) -> dict:
    return {
        "experiment": "learning_curve",
        "method": method,
        "n_high": 25,
        "n_low": None,
        "protocol": protocol,
        "seed": seed,
        "mechanisms": "ECMR",
        "dataset": "lmfp",
        "backbone": "chgnet",
        "region": None,
    }


def start(run: dict, root: Path, mode: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    log = open(root / f"{run['method']}_s{run['seed']}_{time.monotonic_ns()}.log", "w")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-c", RUN_ONE, json.dumps(run), str(root), mode], env=env, stdout=log, stderr=subprocess.STDOUT
    )


def summary(run: dict, root: Path, cpu: dict) -> dict:
    """The finished run's figures, next to the CPU run of the same name."""
    from mfwrap.bench.grid import RunSpec

    name = RunSpec(**run).name
    path = root / "learning_curve" / name
    if not (path / "result.json").is_file():
        return {"name": name, "error": "no result.json (see the run's log under --root)"}
    result = json.loads((path / "result.json").read_text())
    compile_s = 0.0
    for metrics in path.glob("*/metrics.csv"):
        with metrics.open() as f:
            compile_s += max(
                (float(r["mae"]) for r in csv.DictReader(f) if r["target"] == "compile_seconds"), default=0.0
            )
    steps, wall = result["steps"], result["wall_s"]
    mine = {t: result["test"]["high"][t]["mae"] for t in TARGETS}
    theirs = cpu.get(name)
    return {
        "name": name,
        "steps": steps,
        "wall_s": wall,
        "compile_s": compile_s,
        "s_per_step": wall / steps,
        "s_per_step_without_compile": (wall - compile_s) / steps,
        "gpu": result["machine"].get("gpu"),
        "test_mae_gpu": mine,
        "test_mae_cpu": {t: theirs["test"]["high"][t]["mae"] for t in TARGETS} if theirs else None,
    }


def phase(runs: list[dict], roots: list[Path], cpu: dict, mode: str) -> dict:
    """Train ``runs`` side by side (run i under ``roots[i]``); their figures and the aggregate rate."""
    for root in roots:
        root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    procs = [start(r, root, mode) for r, root in zip(runs, roots)]
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - t0
    rows = [dict(summary(r, root, cpu), returncode=c) for r, root, c in zip(runs, roots, codes)]
    steps = sum(r.get("steps", 0) for r in rows)
    return {"count": len(runs), "runs": rows, "wall_s": wall, "steps": steps, "aggregate_steps_per_s": steps / wall}


def full_plan(seconds_per_step: float) -> float:
    """Hours of the full level (all experiments, seeds 0-2; converged at its ceiling) at this rate."""
    from mfwrap.bench.grid import EXPERIMENTS
    from mfwrap.bench.runner import plan_suite

    rows = plan_suite(list(EXPERIMENTS), "full", [0, 1, 2], seconds_per_step=seconds_per_step)
    return sum(r["steps"] + r["pretrain_steps"] for r in rows.values()) * seconds_per_step / 3600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/tmp/suite_gpu", help="where the runs go (fresh: nothing is resumed)")
    parser.add_argument("--at-once", type=int, default=4, help="runs side by side in the second phase")
    parser.add_argument(
        "--eager",
        action="store_true",
        help="eager training steps (the medium level compiles them; the CPU runs compared were compiled)",
    )
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "suite_gpu.json"))
    args = parser.parse_args()
    out = Path(args.out)
    if not torch.cuda.is_available():
        print("No CUDA device: nothing measured (the suite's GPU figures need a GPU).")
        return
    root = Path(args.root)
    mode = "eager" if args.eager else "compiled"
    cpu = {r["name"]: r for r in json.loads(CPU_RESULTS.read_text())["runs"]}
    report: dict = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cpu_cores": os.cpu_count(),
        "level": "medium",
        "training_steps": mode,
        "note": "each run one process, one CPU thread; wall includes data, graphs, compilation and evaluation",
    }

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1))

    report["alone"] = phase([spec("multi_fidelity", "paper", 0)], [root / "alone"], cpu, mode)
    save()
    print(json.dumps(report["alone"], indent=1), flush=True)
    pool = [spec("single_fidelity", "equal_compute", s) for s in (0, 1, 2)] + [spec("multi_fidelity", "paper", 1)]
    at_once = [pool[i % len(pool)] for i in range(args.at_once)]
    report["at_once"] = phase(at_once, [root / f"at_once_{i}" for i in range(len(at_once))], cpu, mode)  # own dirs
    steps = report["at_once"]["steps"]
    alone = report["alone"]["runs"][0]
    if "s_per_step" in alone:
        report["full_level_hours"] = {
            "one_at_a_time": full_plan(alone["s_per_step"]),
            f"{len(at_once)}_at_once": full_plan(1 / report["at_once"]["aggregate_steps_per_s"]) if steps else None,
        }
    save()
    print(json.dumps({k: report[k] for k in ("at_once", "full_level_hours") if k in report}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
