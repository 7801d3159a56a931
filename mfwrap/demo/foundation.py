"""``make demo``: a foundation model gains a fidelity, on a CPU in a few minutes.

CHGNet 0.3.0 (pretrained on MPtrj PBE/PBE+U) and ``--n-high`` LMFP frames labelled at a new level of
theory (the CHGNet r2SCAN teacher, fidelity "high"). Two ways to get an r2SCAN model, at the same
optimiser steps (:mod:`mfwrap.bench.foundation`, which the ``foundation`` benchmark runs over three
seeds and every method):

* fine-tuning: all weights on the high-fidelity frames, after the composition model is refitted to the
  residual of CHGNet 0.3.0's prediction (what ``mfwrap train`` does with ``single_fidelity``);
* multi-fidelity with replay: ``MultiFidelity(CHGNet 0.3.0, ["low", "high"], "ECMR", origin="low")``
  trained 1 : 1 on the high-fidelity frames and ``--replay-n`` pseudo-labelled replay frames
  (``--replay-sources``, default prototype structures of many chemistries, labelled by the frozen
  CHGNet 0.3.0 at its own fidelity, "low"; :mod:`mfwrap.replay`; the foundation benchmark chose
  prototypes over adding the frames' own structures on its validation frames).

Printed: in-domain error at the high fidelity (LMFP test frames), out-of-domain error at the high
fidelity (other chemistries, :mod:`mfwrap.datasets.other_chemistries`) and forgetting (the origin
fidelity's, or the fine-tuned model's, error against CHGNet 0.3.0 on those chemistries). Then the
multi-fidelity model's high fidelity is exported as a plain CHGNet (``MultiFidelity.export``), checked
to predict what the wrapped model predicts, and saved. Both runs train at once, one process each.
The budget is minutes, so absolute errors are far from converged.

    python -m mfwrap.demo [--n-high 25] [--replay-n 150] [--mf-epochs 3] [--out runs/demo]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import numpy as np

from mfwrap.bench import foundation as F
from mfwrap.bench.runner import die_with_parent

METHODS = ("finetune_refit", "mf_ecmr_replay")


def _run(method: str, options_dict: dict, out: str) -> dict:
    """One method in a worker process (one torch thread)."""
    import torch

    torch.set_num_threads(1)
    options = F.Options(**{**options_dict, "replay_sources": tuple(options_dict["replay_sources"])})
    setup = F.prepare(0, options, log=lambda line: None)
    directory = Path(out) / method
    if directory.exists():
        shutil.rmtree(directory)  # the previous demo's run of this method
    return {"method": method, "seed": 0, **F.run_method(method, setup, options, directory)}


def _export(out: Path, setup: F.Setup) -> str:
    """The MF model's high fidelity as a plain CHGNet: saved, and its predictions compared with the wrapped model's."""
    import mfwrap
    from mfwrap.data.graph import graph_atoms

    wrapped = mfwrap.load(out / "mf_ecmr_replay" / "best.pt")
    plain = wrapped.export(F.TARGET)
    path = out / "r2scan_chgnet.pt"
    mfwrap.save(plain, path)
    structures = [graph_atoms(g) for g in setup.test[:4]]
    ours = mfwrap.predict(mfwrap.load(path), structures)
    theirs = mfwrap.predict(wrapped, structures, fidelity=F.TARGET)
    energy = max(abs(a["energy"] - b["energy"]) / len(s) for a, b, s in zip(ours, theirs, structures))
    forces = max(float(np.abs(a["forces"] - b["forces"]).max()) for a, b in zip(ours, theirs))
    return (
        f"exported the high fidelity as a plain {type(plain).__name__}: {path} (no fidelity argument needed); "
        f"against the wrapped model at 'high' on 4 test frames: |ΔE| ≤ {energy:.1e} eV/atom, |ΔF| ≤ {forces:.1e} eV/Å"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m mfwrap.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n-high", type=int, default=25, help="high-fidelity (r2SCAN) training frames (default 25)")
    parser.add_argument("--replay-n", type=int, default=150, help="replay frames (default 150)")
    parser.add_argument(
        "--replay-sources", nargs="+", default=["prototypes"], help="replay sources: own, prototypes, a file"
    )
    parser.add_argument("--mf-epochs", type=int, default=3, help="MF epochs; fine-tuning gets the same steps")
    parser.add_argument("--ood-n", type=int, default=100, help="structures of other chemistries (default 100)")
    parser.add_argument("--jobs", type=int, default=2, choices=(1, 2), help="2: both runs at once (default)")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output directory (default runs/demo)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    options = F.Options(
        n_high=args.n_high,
        replay_n=args.replay_n,
        replay_sources=tuple(args.replay_sources),
        mf_epochs=args.mf_epochs,
        ood_n=args.ood_n,
    )
    print("preparing: CHGNet 0.3.0, the LMFP split, replay labels, other chemistries (cached after a first run) ...")
    setup = F.prepare(0, options, log=lambda line: print(f"  {line}", flush=True))
    epochs = {m: F.epochs_of(F.METHODS[m], setup, options) for m in METHODS}
    print(
        f"  ready after {time.perf_counter() - start:.0f} s: {len(setup.train)} high-fidelity frames, "
        f"{len(setup.replay)} replay frames; fine-tuning {epochs['finetune_refit']} epochs, "
        f"MF {epochs['mf_ecmr_replay']} epochs: the same optimiser steps. Training both ...",
        flush=True,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    if args.jobs == 2:
        context = multiprocessing.get_context("spawn")
        pool = concurrent.futures.ProcessPoolExecutor(
            2, mp_context=context, initializer=die_with_parent, initargs=(os.getpid(),)
        )
        with pool:
            futures = [pool.submit(_run, m, options.as_dict(), str(args.out)) for m in METHODS]
            results = [f.result() for f in futures]
    else:
        results = [_run(m, options.as_dict(), str(args.out)) for m in METHODS]
    foundation = {"method": "foundation", "seed": 0, **F.run_method("foundation", setup, options, args.out)}
    summary = F.summarise([foundation, *results])
    print("\nMAE, one seed (energy meV/atom / forces meV/Å / stress GPa):")
    print(F.table(summary))
    print(_export(args.out, setup))
    summary = {"summary": summary, "options": options.as_dict(), "total_seconds": time.perf_counter() - start}
    F.write_json(args.out / "demo.json", summary)
    print(f"\nsummary: {args.out / 'demo.json'}  (total {summary['total_seconds']:.0f} s)")
    return summary
