"""A foundation model gains a fidelity: CHGNet 0.3.0 + N_high r2SCAN-teacher LMFP frames, every method at
equal compute, measured in-domain, out of domain and for forgetting (:mod:`mfwrap.bench.foundation`).

    OMP_NUM_THREADS=1 python benchmarks/foundation.py --jobs 2                 # 3 seeds, every method
    python benchmarks/foundation.py --seeds 0 --methods finetune mf_ecmr_replay  # one seed, two methods

Each finished run is written to ``--out``/runs/<method>_nh<N>_s<seed>.json with the settings that
determine it; a rerun skips a run whose file holds the same settings and refuses (unless
``--overwrite``) one whose file holds others. Training directories go to ``--work`` (not results).
When every run is there, writes ``--out``/../foundation.json (per-run results, mean ± std per method,
the settings, machine, wall time) and prints the table. ``--keep-models DIR`` copies the best.pt of
seed 0's ``finetune`` and ``mf_ecmr_replay`` there, named by method.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import platform
import shutil
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
VERSION = 1  # of this experiment's protocol: a run file of another version is not reused


def _run_file(out: Path, method: str, n_high: int, seed: int) -> Path:
    return out / "runs" / f"{method}_nh{n_high}_s{seed}.json"


def _identity(method: str, seed: int, options) -> dict:
    return {"version": VERSION, "method": method, "seed": seed, "options": options.as_dict()}


def _one(method: str, seed: int, options_dict: dict, out: str, work: str, cache_dir: str | None) -> dict:
    """One run in a worker process (one torch thread); writes its run file, returns the result."""
    import torch

    torch.set_num_threads(1)
    from mfwrap.bench import foundation as F

    options = F.Options(**{**options_dict, "replay_sources": tuple(options_dict["replay_sources"])})
    log = lambda line: print(f"[{method} s{seed}] {line}", file=sys.stderr, flush=True)  # noqa: E731
    setup = F.prepare(seed, options, cache_dir=cache_dir, log=log)
    run_dir = Path(work) / f"{method}_nh{options.n_high}_s{seed}"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # ours (--work): a run that did not finish starts again
    result = F.run_method(method, setup, options, run_dir)
    record = {**_identity(method, seed, options), **result, "replay": setup.replay_provenance}
    F.write_json(_run_file(Path(out), method, options.n_high, seed), record)
    log(f"done in {result['wall_s']:.0f} s: {json.dumps(result['measures'])}")
    return record


def main(argv: list[str] | None = None) -> int:
    from mfwrap.bench import foundation as F
    from mfwrap.bench.runner import die_with_parent

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(F.METHODS), choices=list(F.METHODS))
    parser.add_argument("--n-high", type=int, default=F.Options.n_high)
    parser.add_argument("--mf-epochs", type=int, default=F.Options.mf_epochs)
    parser.add_argument("--lr", type=float, default=F.Options.lr)
    parser.add_argument("--replay-n", type=int, default=F.Options.replay_n)
    parser.add_argument("--replay-sources", nargs="+", default=list(F.Options.replay_sources))
    parser.add_argument("--ood-n", type=int, default=F.Options.ood_n)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "foundation")
    parser.add_argument("--work", type=Path, default=Path("runs/foundation"))
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--overwrite", action="store_true", help="replace run files holding other settings")
    parser.add_argument("--keep-models", type=Path, default=None)
    parser.add_argument("--note", help="recorded with the results (e.g. what else ran on the machine)")
    args = parser.parse_args(argv)
    options = F.Options(
        n_high=args.n_high,
        mf_epochs=args.mf_epochs,
        lr=args.lr,
        replay_n=args.replay_n,
        replay_sources=tuple(args.replay_sources),
        ood_n=args.ood_n,
    )
    started = time.time()
    todo, results = [], []
    for seed in args.seeds:
        for method in args.methods:
            path = _run_file(args.out, method, options.n_high, seed)
            if path.is_file():
                stored = json.loads(path.read_text())
                same = {k: stored.get(k) for k in ("version", "method", "seed", "options")}
                if same == _identity(method, seed, options):
                    results.append(stored)
                    continue
                if not args.overwrite:
                    print(f"{path} holds a run with other settings; give --overwrite to replace it", file=sys.stderr)
                    return 2
            todo.append((method, seed))
    print(f"{len(results)} runs done, {len(todo)} to run", file=sys.stderr)
    if todo:
        (args.out / "runs").mkdir(parents=True, exist_ok=True)
        # the shared sets (other chemistries, LMFP) are built once before the workers read them
        F.prepare(args.seeds[0], options, cache_dir=args.cache_dir, log=lambda line: print(line, file=sys.stderr))
        context = multiprocessing.get_context("spawn")
        pool = concurrent.futures.ProcessPoolExecutor(
            args.jobs, mp_context=context, initializer=die_with_parent, initargs=(os.getpid(),)
        )
        with pool:
            futures = [
                pool.submit(_one, m, s, options.as_dict(), str(args.out), str(args.work), args.cache_dir)
                for m, s in todo
            ]
            for future in concurrent.futures.as_completed(futures):
                results.append(future.result())
    if args.keep_models is not None:
        args.keep_models.mkdir(parents=True, exist_ok=True)
        for method in ("finetune", "mf_ecmr_replay"):
            source = args.work / f"{method}_nh{options.n_high}_s0" / "best.pt"
            if source.is_file():
                shutil.copy2(source, args.keep_models / f"foundation_lmfp_chgnet030_{method}_nh{options.n_high}_s0.pt")
    summary = F.summarise(results)
    replay = {}  # what labelling each seed's replay set cost (its cache's provenance)
    for seed in args.seeds:
        provenance = F.prepare(seed, options, cache_dir=args.cache_dir, log=lambda line: None).replay_provenance
        keep = ("counts", "structure_seconds", "labelling_seconds", "peak_rss_mib", "model_sha256")
        replay[seed] = {key: provenance.get(key) for key in keep}
    payload = {
        "experiment": "foundation",
        "version": VERSION,
        "options": options.as_dict(),
        "seeds": args.seeds,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads 1 per run",
        "jobs": args.jobs,
        "note": args.note,
        "date": time.strftime("%Y-%m-%d"),
        "wall_s_this_invocation": time.time() - started,
        "run_hours": sum(r["wall_s"] for r in results) / 3600,
        "replay": replay,
        "summary": summary,
        "runs": sorted(results, key=lambda r: (r["method"], r["seed"])),
    }
    F.write_json(args.out.parent / f"{args.out.name}.json", payload)
    print(F.table(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
