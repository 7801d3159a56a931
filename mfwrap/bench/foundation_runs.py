"""``mfwrap bench foundation``: the foundation experiment's runs (:mod:`mfwrap.bench.foundation`), one file each.

Layout, beside the suite's levels (``--out`` default ``benchmarks/results/suite``, ``--root`` default
``runs/suite``):

* ``OUT/foundation/runs/<case>/<method>_nh<N>_s<seed>.json`` — one finished run: its identity (protocol
  version, case, method, seed, :class:`~mfwrap.bench.foundation.Options`), measures, steps, wall time and
  what its replay set cost. A run whose file holds the same identity is not run again; a file holding
  another identity is refused (``--overwrite`` replaces it).
* ``ROOT/foundation/<case>/<method>_nh<N>_s<seed>/`` — its training directory (checkpoints), claimed with a
  :class:`~mfwrap.bench.lock.DirectoryLock` so that two launchers never train the same run; an unfinished
  one starts again.
* ``OUT/foundation.{json,md,png}`` — every run file under ``OUT/foundation/runs`` aggregated (mean ± std
  per case, N_high and method), the tables and verdicts, the plot; ``OUT/<level>/claims.md`` of the suite's
  level (:data:`mfwrap.bench.document.SUITE_LEVEL`) is rewritten with the verdicts, and the results
  document with it where ``OUT`` is the committed results tree.
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
from typing import Any

VERSION = 1  # of the experiment's protocol: a run file of another version is not reused
KEEP = ("finetune", "finetune_refit", "mf_ecmr_replay", "mf_ecmr_prototypes_2to1")  # models --keep-models copies


def run_file(out: Path, case: str, method: str, n_high: int, seed: int) -> Path:
    return out / "foundation" / "runs" / case / f"{method}_nh{n_high}_s{seed}.json"


def identity(method: str, seed: int, options) -> dict[str, Any]:
    return {"version": VERSION, "method": method, "seed": seed, "options": options.as_dict()}


def _one(
    method: str, seed: int, options_dict: dict, out: str, work: str, cache_dir: str | None, note: str | None = None
) -> dict | None:
    """One run in a worker process (one torch thread); writes its run file and returns it (None: another
    process holds the run's lock)."""
    import torch

    torch.set_num_threads(1)
    from mfwrap.bench import foundation as F
    from mfwrap.bench.lock import DirectoryLock

    options = F.Options.from_dict(options_dict)
    log = lambda line: print(f"[{options.case} {method} N{options.n_high} s{seed}] {line}", file=sys.stderr, flush=True)  # noqa: E731
    run_dir = Path(work) / options.case / f"{method}_nh{options.n_high}_s{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = DirectoryLock(run_dir)
    if not lock.acquire():
        log(f"skipped: {run_dir} is locked by {lock.holder()}")
        return None
    try:
        for path in run_dir.iterdir():  # ours (--root): a run that did not finish starts again
            if path.name != lock.path.name:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        setup = F.prepare(seed, options, cache_dir=cache_dir, log=log)
        result = F.run_method(method, setup, options, run_dir)
        record = {**identity(method, seed, options), **result, "replay": setup.replay_provenance, "note": note}
        F.write_json(run_file(Path(out), options.case, method, options.n_high, seed), record)
        log(f"done in {result['wall_s']:.0f} s: {json.dumps(result['measures'])}")
        return record
    finally:
        lock.release()


def read_runs(out: Path) -> list[dict[str, Any]]:
    """Every run file under ``out/foundation/runs`` of this protocol version."""
    runs = []
    for path in sorted((out / "foundation" / "runs").glob("*/*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("version") == VERSION:
            runs.append(record)
    return runs


def aggregate(runs: list[dict[str, Any]], note: str | None = None) -> dict[str, Any]:
    """The aggregate of ``runs``: summary per case and N_high, options per case (one set per case, N_high
    aside: runs of a case with other settings are an error naming them), replay costs, machine, run-hours."""
    from mfwrap.bench import foundation as F

    options_by_case: dict[str, dict] = {}
    groups: dict[str, dict[str, list]] = {}
    for run in runs:
        options = {k: v for k, v in run["options"].items() if k != "n_high"}
        known = options_by_case.setdefault(options["case"], options)
        if known != options:
            raise ValueError(
                f"runs of case {options['case']!r} with different settings: {known} and {options} "
                f"({run['method']}, seed {run['seed']}); move one set aside"
            )
        groups.setdefault(options["case"], {}).setdefault(str(run["options"]["n_high"]), []).append(run)
    summary = {
        case: {n: F.summarise(members) for n, members in sorted(by_n.items(), key=lambda kv: int(kv[0]))}
        for case, by_n in groups.items()
    }
    replay = {}
    for run in runs:
        key = f"{run['options']['case']} N{run['options']['n_high']} s{run['seed']}"
        provenance = run.get("replay") or {}
        keep = ("counts", "structure_seconds", "labelling_seconds", "peak_rss_mib", "model_sha256")
        replay.setdefault(key, {k: provenance.get(k) for k in keep})
    first = options_by_case.get("lmfp_chgnet030") or next(iter(options_by_case.values()), {})
    notes = {}  # {case: the notes its runs were given (--note)}
    for run in runs:
        if run.get("note") and run["note"] not in notes.setdefault(run["options"]["case"], []):
            notes[run["options"]["case"]].append(run["note"])
    return {
        "experiment": "foundation",
        "version": VERSION,
        "options": first,
        "options_by_case": options_by_case,
        "seeds": sorted({r["seed"] for r in runs}),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads 1 per run",
        "note": note,
        "notes_by_case": notes,
        "date": time.strftime("%Y-%m-%d"),
        "run_hours": sum(r["wall_s"] for r in runs) / 3600,
        "replay": replay,
        "summary": summary,
        "runs": sorted(runs, key=lambda r: (r["options"]["case"], r["options"]["n_high"], r["method"], r["seed"])),
    }


def write_outputs(out: Path, note: str | None = None) -> list[Path]:
    """``out/foundation.{json,md,png}`` from every run file, the suite level's ``claims.md`` with the verdicts,
    and the results document where ``out`` is the results tree's suite folder."""
    from mfwrap.bench import foundation as F
    from mfwrap.bench.document import SUITE_LEVEL, write_results_document
    from mfwrap.files import write_text

    runs = read_runs(out)
    if not runs:
        return []
    payload = aggregate(runs, note)
    F.write_json(out / "foundation.json", payload)
    write_text(out / "foundation.md", F.render(payload))
    F.plot(payload, out / "foundation.png")
    written = [out / f"foundation.{suffix}" for suffix in ("json", "md", "png")]
    level = out / SUITE_LEVEL
    if level.is_dir():
        from mfwrap.bench.claims import claims_document

        write_text(level / "claims.md", claims_document(level))
        written.append(level / "claims.md")
    results_dir = out.parent
    if out.name == "suite" and (results_dir / "methods.md").exists():
        written.append(write_results_document(results_dir, results_dir.parent / "README.md"))
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The foundation experiment's options of ``mfwrap bench`` (the suite's --seeds, --jobs, --root, --out too)."""
    from mfwrap.bench import foundation as F

    group = parser.add_argument_group("foundation experiment (mfwrap bench foundation)")
    group.add_argument("--case", choices=list(F.CASES), default=F.Options.case, help="foundation model and data set")
    group.add_argument(
        "--methods", nargs="+", choices=list(F.METHODS), default=None, help="default: every method the case can run"
    )
    group.add_argument("--n-high", type=int, default=F.Options.n_high, help="new-fidelity training frames")
    group.add_argument("--mf-epochs", type=int, default=F.Options.mf_epochs, help="MF epochs; the others its steps")
    group.add_argument("--lr", type=float, default=F.Options.lr)
    group.add_argument("--replay-n", type=int, default=F.Options.replay_n)
    group.add_argument("--replay-sources", nargs="+", default=list(F.Options.replay_sources))
    group.add_argument("--ood-n", type=int, default=F.Options.ood_n, help="structures of other chemistries")
    group.add_argument("--cache-dir", default=None, help="data and replay cache (default $MFWRAP_CACHE or ~/.cache)")
    group.add_argument("--overwrite", action="store_true", help="replace run files holding other settings")
    group.add_argument(
        "--keep-models",
        type=Path,
        default=None,
        help=f"copy seed 0's best.pt of {', '.join(KEEP)} there, named by case, method and N_high",
    )
    group.add_argument("--note", help="recorded with the results (e.g. what else ran on the machine)")


def run(args: argparse.Namespace) -> int:
    """Run the missing runs of ``args`` (``--jobs`` at once), then write the outputs (module docstring)."""
    from mfwrap.bench import foundation as F
    from mfwrap.bench.runner import die_with_parent

    options = F.Options(
        n_high=args.n_high,
        mf_epochs=args.mf_epochs,
        lr=args.lr,
        replay_n=args.replay_n,
        replay_sources=tuple(args.replay_sources),
        ood_n=args.ood_n,
        case=args.case,
    )
    case = F.CASES[options.case]
    methods = args.methods or [m for m, method in F.METHODS.items() if case.real_low or not method.needs_real_low]
    unusable = [m for m in methods if F.METHODS[m].needs_real_low and case.real_low is None]
    if unusable:
        print(
            f"mfwrap bench foundation: {', '.join(unusable)} need a real lower fidelity; case {case.name} has "
            "none (choose li3ps4_chgnet030 or leave them out)",
            file=sys.stderr,
        )
        return 2
    out, work = Path(args.out), Path(args.root) / "foundation"
    todo, done = [], 0
    for seed in args.seeds:
        for method in methods:
            path = run_file(out, case.name, method, options.n_high, seed)
            if path.is_file():
                stored = json.loads(path.read_text(encoding="utf-8"))
                if {k: stored.get(k) for k in ("version", "method", "seed", "options")} == identity(
                    method, seed, options
                ):
                    done += 1
                    continue
                if not args.overwrite:
                    print(f"{path} holds a run with other settings; give --overwrite to replace it", file=sys.stderr)
                    return 2
            todo.append((method, seed))
    print(f"{case.name}, N_high {options.n_high}: {done} runs done, {len(todo)} to run", file=sys.stderr)
    failed = 0
    if todo:
        # the shared sets (other chemistries, the data set) are built once before the workers read them
        F.prepare(args.seeds[0], options, cache_dir=args.cache_dir, log=lambda line: print(line, file=sys.stderr))
        context = multiprocessing.get_context("spawn")
        pool = concurrent.futures.ProcessPoolExecutor(
            args.jobs, mp_context=context, initializer=die_with_parent, initargs=(os.getpid(),)
        )
        with pool:
            futures = {
                pool.submit(_one, m, s, options.as_dict(), str(out), str(work), args.cache_dir, args.note): (m, s)
                for m, s in todo
            }
            for future in concurrent.futures.as_completed(futures):
                try:
                    future.result()
                except Exception as error:  # one failed run does not stop the others; reported at the end
                    failed += 1
                    method, seed = futures[future]
                    print(f"{case.name} {method} seed {seed} failed: {type(error).__name__}: {error}", file=sys.stderr)
    if args.keep_models is not None:
        args.keep_models.mkdir(parents=True, exist_ok=True)
        for method in KEEP:
            source = work / case.name / f"{method}_nh{options.n_high}_s0" / "best.pt"
            target = args.keep_models / f"{case.name}_{method}_nh{options.n_high}_seed0.pt"
            if source.is_file() and not target.exists():
                shutil.copy2(source, target)
    for path in write_outputs(out, args.note):
        print(path)
    return 1 if failed else 0
