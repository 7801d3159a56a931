"""How the compiled multi-fidelity model adds W_F[:, f] to every row, measured in the training step.

    python benchmarks/fidelity_term.py --threads 1 2 --steps 16      # ~10 min on 2 cores (compiles)

In the dense mode of a compiled :class:`mfwrap.MultiFidelity` every message layer adds its
fidelity column W_F[:, f_r] to each output row r (mfwrap.mechanisms.linear.per_row_term). Three
ways to build that (rows, C) term from the (n_F, C) table are timed:

* ``gather``: ``table.index_select(0, rows)``; its backward scatter-adds every row into n_F rows
  (atomic adds shared by all threads);
* ``onehot``: ``one_hot(rows) @ table``; backward onehotᵀ @ grad;
* ``where``: a ``torch.where`` chain over the fidelities (what mfwrap uses); backward one masked
  reduction per fidelity.

Each against the bare compiled CHGNet: one compiled training step (E+F+S+M Huber loss, forces and
stress inside the graph, Adam) on batches of 4 LMFP-like 56-atom cells (benchmarks/train_step.py's
structures, labelled by the native 0.3.0 model), mixed fidelities for the wrapped models; the four
take turns step by step; medians of ``--steps``. Writes benchmarks/results/fidelity_term.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import FIDELITIES, labelled_graphs, mfwrap_setup, structures  # noqa: E402

import mfwrap  # noqa: E402
import mfwrap.mechanisms.linear as linear_module  # noqa: E402
from backbones.chgnet import CHGNet  # noqa: E402
from mfwrap import MultiFidelity  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "fidelity_term.json"


def gather_term(table, rows):
    return table.index_select(0, rows)


def onehot_term(table, rows):
    return torch.nn.functional.one_hot(rows, table.shape[0]).to(table.dtype) @ table


VARIANTS = {"gather": gather_term, "onehot": onehot_term, "where": linear_module.per_row_term}


def measure(threads: int, batch_size: int, steps: int) -> dict:
    torch.set_num_threads(threads)
    data = structures(4 * batch_size)
    native = CHGNet.from_pretrained("0.3.0")
    predictions = mfwrap.predict(native, data)
    labels = [
        {"e": p["energy"] / len(s), "f": p["forces"], "s": p["stress"], "m": p["magmoms"]}
        for p, s in zip(predictions, data)
    ]
    high = labelled_graphs(data, labels, native.graph_spec, [1] * len(data))
    mixed = labelled_graphs(data, labels, native.graph_spec, [i % 2 for i in range(len(data))])
    tmp = Path(tempfile.mkdtemp())
    runs = {"bare CHGNet": (mfwrap_setup(CHGNet.from_pretrained("0.3.0"), high, batch_size, True, tmp / "n")[0], None)}
    for name, term in VARIANTS.items():
        model = MultiFidelity(CHGNet.from_pretrained("0.3.0"), FIDELITIES, "ECMR")
        runs[f"MF {name}"] = (mfwrap_setup(model, mixed, batch_size, True, tmp / name)[0], term)
    original = linear_module.per_row_term
    times: dict[str, list[float]] = {name: [] for name in runs}
    try:
        for i in range(-2, steps):  # two warm-up steps each (the first compiles)
            for name, (step, term) in runs.items():
                linear_module.per_row_term = term or original
                start = time.perf_counter()
                step(i + 2)
                if i >= 0:
                    times[name].append(time.perf_counter() - start)
    finally:
        linear_module.per_row_term = original
    medians = {name: statistics.median(t) for name, t in times.items()}
    return {
        name: {"median_s_per_step": m, "overhead_vs_bare": m / medians["bare CHGNet"] - 1}
        for name, m in medians.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=16)
    args = parser.parse_args()
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(mfwrap.compile.inductor_cache_dir()))
    report = {
        "machine": {"cpu": platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__},
        "batch_size": args.batch_size,
        "steps": args.steps,
        "date": time.strftime("%Y-%m-%d"),
        "threads": {},
    }
    for threads in args.threads:
        report["threads"][str(threads)] = rows = measure(threads, args.batch_size, args.steps)
        print(
            f"{threads} thread(s):",
            ", ".join(f"{k} {v['median_s_per_step']:.3f} s ({v['overhead_vs_bare']:+.1%})" for k, v in rows.items()),
            flush=True,
        )
        RESULTS.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
