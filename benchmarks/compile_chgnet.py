"""torch.compile of the native CHGNet (inductor, CPU): eager vs compiled, pretrained 0.3.0, float32.

Workloads on perturbed LiFePO4 1×1×2 cells (56 atoms), one thread:

    single     E+F+S+M of one structure (``energy_and_derivatives``, no parameter gradients)
    batch16    E+F+S+M of a batch of 16
    train4     a training step on a batch of 4: E+F+S+M with ``create_graph=True``, masked Huber
               loss on E, F, S, M, backward to the parameters (no optimiser step)

The first compiled call of each kind compiles; its time minus the steady median is reported as the
compile time. Then eager and compiled calls alternate (noise on a shared machine hits both alike);
reported: medians, the ratio eager / compiled, the largest output differences and the largest
relative parameter-gradient difference of the training step. The machine's load average is recorded
next to the figures: on a shared machine only the ratios mean something.

    python benchmarks/compile_chgnet.py [--reps 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from torch_geometric.data import Batch

import mfwrap
from backbones.chgnet import CHGNet
from mfwrap.data import keys as K
from mfwrap.data.graph import to_graph
from mfwrap.datasets.structures import lifepo4
from mfwrap.physics import energy_and_derivatives
from mfwrap.train.loss import MultiTargetLoss

RESULTS = Path(__file__).parent / "results"


def batch_of(model: CHGNet, count: int, seed: int) -> Batch:
    graphs = []
    for k in range(count):
        s = lifepo4((1, 1, 2))
        s.perturb(0.05)
        n = len(s)
        gen = torch.Generator().manual_seed(seed + k)
        labels = {
            K.ENERGY: -7.0 * n,
            K.FORCES: 0.3 * torch.randn(n, 3, generator=gen).numpy(),
            K.STRESS: torch.randn(3, 3, generator=gen).numpy(),
            K.MAGMOMS: torch.rand(n, generator=gen).numpy(),
        }
        graphs.append(to_graph(s, model.graph_spec, labels=labels))
    return Batch.from_data_list(graphs)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = CHGNet.from_pretrained("0.3.0")
    compiled = mfwrap.compile_model(model)
    loss = MultiTargetLoss("efsm")
    params = [p for p in model.parameters() if p.requires_grad]

    def infer(net, batch):
        def run():
            with torch.no_grad():
                return energy_and_derivatives(net, batch)

        return run

    def train(net, batch):
        def run():
            value, _ = loss(energy_and_derivatives(net, batch, create_graph=True), batch)
            return {"loss": value.detach().reshape(1)} | {
                f"grad{i}": g
                for i, g in enumerate(torch.autograd.grad(value, params, allow_unused=True))
                if g is not None
            }

        return run

    workloads = {
        "single": (infer, batch_of(model, 1, 0)),
        "batch16": (infer, batch_of(model, 16, 100)),
        "train4": (train, batch_of(model, 4, 200)),
    }
    results: dict = {
        "device": "CPU, shared 2-core x86-64 machine",
        "threads": args.threads,
        "torch": torch.__version__,
        "backend": "inductor",
        "fullgraph": True,
        "model": "CHGNet 0.3.0 float32",
        "structure": "LiFePO4 1x1x2 (56 atoms), perturbed 0.05 A",
        "reps": args.reps,
        "load_average_start": os.getloadavg(),
        "workloads": {},
        "note": "shared machine under load: compare the ratios, not the absolute times",
    }
    for name, (kind, batch) in workloads.items():
        first, got = timed(kind(compiled, batch))
        want = kind(model, batch)()
        times = {"eager": [], "compiled": []}
        for _ in range(args.reps):
            for label, net in (("eager", model), ("compiled", compiled)):
                times[label].append(timed(kind(net, batch))[0])
        eager, fast = statistics.median(times["eager"]), statistics.median(times["compiled"])
        if kind is infer:
            diff = {k: float((got[k] - want[k]).abs().max()) for k in (K.FORCES, K.STRESS, K.MAGMOMS)}
            diff["energy_per_atom"] = float((got[K.ENERGY] - want[K.ENERGY]).abs().max() / 56)
        else:
            diff = {
                "loss_rel": float(((got["loss"] - want["loss"]) / want["loss"]).abs().max()),
                "grad_max_rel": max(
                    float((got[k] - want[k]).abs().max() / want[k].abs().max().clamp_min(1e-30))
                    for k in want
                    if k.startswith("grad")
                ),
            }
        results["workloads"][name] = {
            "eager_median_s": eager,
            "compiled_median_s": fast,
            "speedup": eager / fast,
            "first_compiled_call_s": first,
            "compile_s": first - fast,
            "max_difference": diff,
            "load_average_after": os.getloadavg(),
        }
        print(
            f"{name:8s} eager {eager * 1e3:8.1f} ms  compiled {fast * 1e3:8.1f} ms  ×{eager / fast:5.2f}  "
            f"compile {first - fast:6.1f} s  diff {diff}",
            flush=True,
        )
    results["compiled_graphs"] = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "compile_chgnet.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
