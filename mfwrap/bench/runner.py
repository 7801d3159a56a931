"""Running the suite: one directory per run, skipped when its result exists, resumed when killed.

``root/<experiment>/<run name>/`` (``mfwrap bench``: ``root`` is ``--root/<level>``) holds the run's
trainer output (checkpoints, metric logs), its lock while a process trains it
(:mod:`mfwrap.bench.lock`) and, when it has finished, ``result.json``
(:class:`mfwrap.bench.result.RunResult`: spec, level, epochs, steps, wall time, machine,
training-set sizes, validation and test metrics, identity). A run's identity
(:mod:`mfwrap.bench.identity`, also in the directory's ``identity.json`` from its start) is
everything that determines it but its experiment, and its name says the spec's part (dataset,
backbone, method, mechanisms, sizes, region, protocol, seed); a result counts as done, and is copied
or restored, only for a run of the same identity (another one is warned about, never reused nor
overwritten). A run that two experiments share (e.g. MF at N_high = 50 in the learning curve and the
ablations) is trained once and its result copied, marked ``reused_from``. A run that fails writes
``error.json`` (its traceback) and the others go on; the next invocation retries it. Everything is
seeded: the run's seed picks the validation and training subsets and initialises the model.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import platform
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from mfwrap.bench.backbones import BACKBONES
from mfwrap.bench.grid import EXPERIMENTS, LEVELS, Level, RunSpec, convergence_options, epochs_for
from mfwrap.bench.identity import SHARED_PRETRAINING, differences, identity_of, run_identity
from mfwrap.bench.lock import DirectoryLock
from mfwrap.bench.methods import METHODS
from mfwrap.bench.result import RunResult, read_result, read_runs, warn_damaged
from mfwrap.data.readers import to_graphs
from mfwrap.datasets.registry import Split, Splits, get_dataset
from mfwrap.files import remove_interrupted_writes, write_text


def family(dataset: str) -> str:
    """The data set a run's ``dataset`` is a variant of ("lmfp-gap50" → "lmfp")."""
    return get_dataset(dataset).family


def fidelities_of(dataset: str) -> list[str]:
    """The dataset's fidelity names, low first, the target (high) fidelity last."""
    return list(get_dataset(dataset).fidelities)


def targets_of(dataset: str) -> str:
    """The targets the dataset labels ("efsm": energy, forces, stress, magmoms)."""
    return get_dataset(dataset).targets


BATCH_SIZE = 4
LEARNING_RATE = 0.005


def make_splits(spec: RunSpec, level: Level) -> Splits:
    """The run's frames: the registry's split rule (:mod:`mfwrap.datasets.registry`) with the run's
    seed, N_high, N_low (None: the level's ``n_low_all``) and region, the level's LMFP size and,
    for a dataset that ships no validation frames, the level's ``n_val``."""
    dataset = get_dataset(spec.dataset)
    n_low = level.n_low_all if spec.n_low is None else spec.n_low
    n_val = None if dataset.ships_validation else level.n_val
    return dataset.split(
        Split(
            size=level.lmfp_size if dataset.sizes else None,
            seed=spec.seed,
            n_high=spec.n_high,
            n_low=n_low,
            n_val=n_val,
            region=spec.region,
        )
    )


def train_options(spec: RunSpec, splits: Splits) -> dict:
    """The TrainConfig options of the run's method (:attr:`mfwrap.bench.methods.Method.train_options`)."""
    low, high = fidelities_of(spec.dataset)
    return METHODS[spec.method].train_options(low, high, len(splits.train_low), len(splits.train_high))


def _experiment(spec: RunSpec, level: Level, splits: Splits, out: Path, eager: bool = False):
    """The run's :class:`mfwrap.train.baselines.Experiment` and the epochs of its final stage."""
    from mfwrap.train.baselines import Experiment
    from mfwrap.train.config import TrainConfig

    method, backbone = METHODS[spec.method], BACKBONES[spec.backbone]
    n_mf = len(splits.train_high) + len(splits.train_low)
    own = n_mf if method.multi_fidelity else len(splits.train_high)
    epochs = epochs_for(spec, level, n_mf, own, BATCH_SIZE)
    targets = targets_of(spec.dataset) if backbone.predicts_magmoms else targets_of(spec.dataset).replace("m", "")
    config = TrainConfig(
        targets=targets,
        epochs=epochs,
        batch_size=BATCH_SIZE,
        lr=LEARNING_RATE,
        seed=spec.seed,
        output_dir=str(out),
        progress=False,
        checkpoint_every=50,
        compile=level.compile and backbone.compilable and not eager,
        **convergence_options(spec, level, n_mf, own, BATCH_SIZE),
        **train_options(spec, splits),
    )
    model = {
        "backbone": backbone.class_path,
        "kwargs": backbone.kwargs_at(level.name),
        "mechanisms": spec.mechanisms,
        **method.model,
    }
    return Experiment(
        method=method.trains, model=model, train=config, pretrain={"epochs": level.epochs}, **method.experiment
    ), epochs


def schedule_of(config) -> dict:
    """The learning-rate schedule and early stopping of a run's final stage, for its result."""
    schedule = {
        "scheduler": config.scheduler,
        "lr": config.lr,
        "lr_min_fraction": config.lr_min_fraction,
        "patience": config.patience,
    }
    if config.scheduler == "plateau":
        schedule.update(plateau_patience=config.plateau_patience, plateau_factor=config.plateau_factor)
    return schedule


def run_one(spec: RunSpec, level_name: str, root: str, eager: bool = False) -> RunResult:
    """Train and test one run (resuming its checkpoints); writes and returns its result. ``eager``:
    eager training steps where the level compiles them (``compiled_steps`` in the result says which)."""
    from mfwrap.train.baselines import initial_backbone, run_experiment

    level = LEVELS[level_name]
    out = Path(root) / spec.experiment / spec.name
    identity = claim_directory(out, spec, level_name)
    remove_interrupted_writes(out)  # a killed write's temporary files (this process alone trains the run)
    start = time.perf_counter()
    splits = make_splits(spec, level)
    experiment, epochs = _experiment(spec, level, splits, out, eager)
    backbone = initial_backbone(experiment)  # built once: its graph_spec makes the graphs, then it trains
    names = fidelities_of(spec.dataset)
    graphs = lambda records: to_graphs(records, backbone.graph_spec, names)  # noqa: E731
    low = splits.train_low if METHODS[spec.method].uses_low_fidelity else []
    train = graphs(low + splits.train_high)
    pretrain_source = share_pretraining(spec, level_name, experiment, out, Path(root))
    summary = run_experiment(
        experiment, names, train, graphs(splits.val), graphs(splits.test), resume=True, backbone=backbone
    )
    result = RunResult(
        spec=spec,
        name=spec.name,
        level=level.name,
        protocol=spec.protocol,
        epochs=epochs,
        epochs_run=summary.get("epochs_run"),
        steps=summary.get("steps"),
        wall_s=time.perf_counter() - start,
        n_train={"high": len(splits.train_high), "low": len(low)},
        train_options=train_options(spec, splits),
        fidelity_init=experiment.model.fidelity_init,
        compiled_steps=experiment.train.compile is not False,
        schedule=schedule_of(experiment.train),
        n_val=len(splits.val),
        n_test=len(splits.test),
        target_fidelity=names[-1],
        best=summary["best"],
        val=summary["val"],
        test=summary["test"],
        machine=machine(),
        pretrain_reused_from=pretrain_source,
        identity=identity,
    )
    result.write(out / "result.json")
    (out / "error.json").unlink(missing_ok=True)
    return result


def claim_directory(out: Path, spec: RunSpec, level: str) -> dict:
    """Make ``out`` the directory of this run (its identity in ``identity.json``) and return the identity;
    ValueError naming the directory and the differences if it holds another run's checkpoints or result."""
    identity = run_identity(spec, level)
    out.mkdir(parents=True, exist_ok=True)
    marker = out / "identity.json"
    found = json.loads(marker.read_text()) if marker.is_file() else None
    result = read_result(out / "result.json")
    if found is None and result is not None:
        found = identity_of(result)
    if found is not None and found != identity:
        raise ValueError(
            f"{out} holds another run ({'; '.join(differences(found, identity))}): not reused, not overwritten; "
            "move it away or use another --root"
        )
    if not marker.is_file():
        write_text(marker, json.dumps(identity, indent=1))
    return identity


def share_pretraining(spec: RunSpec, level: str, experiment, out: Path, root: Path) -> str | None:
    """Copy a finished identical low-fidelity pre-training stage into ``out/pretrain``; returns its
    source ("<experiment>/<run>") or None.

    Stage one of transfer, Δ and warm-started MF trains the plain backbone on the low-fidelity
    frames only, which depend on (dataset, seed, N_low), not on N_high, the protocol or the method;
    with the same stage-one TrainConfig (compared as resuming compares it) it is the same training,
    so it is done once per (level, dataset and its version, backbone and its arguments, seed, N_low, config:
    :data:`mfwrap.bench.identity.SHARED_PRETRAINING`) and copied, as identical runs are
    (``reuse_finished``). The copy resumes as a finished stage: it is evaluated, not retrained.
    """
    import shutil

    from mfwrap.train.baselines import pretrain_config
    from mfwrap.train.checkpoint import resume_conflicts

    marker = out / "pretrain_reused_from.json"  # provenance of a copy, written first, read again on resuming
    if not METHODS[spec.method].pretrains:
        return None
    if (out / "pretrain" / "last.pt").exists():
        return json.loads(marker.read_text())["source"] if marker.is_file() else None
    identity = run_identity(spec, level)
    wanted = pretrain_config(experiment, fidelities_of(spec.dataset)[0])
    for result_path in sorted(root.glob("*/*/result.json")):
        source = result_path.parent / "pretrain"
        if source == out / "pretrain" or not (source / "metrics.json").is_file() or not (source / "last.pt").is_file():
            continue
        other = read_result(result_path)
        if (
            other is None
            or other.reused_from
            or not METHODS[other.spec.method].pretrains
            or differences(identity_of(other), identity, SHARED_PRETRAINING)
        ):
            continue
        if resume_conflicts(json.loads((source / "metrics.json").read_text()).get("config", {}), wanted):
            continue
        origin = other.pretrain_reused_from or f"{result_path.parent.parent.name}/{result_path.parent.name}"
        write_text(marker, json.dumps({"source": origin}))
        shutil.copytree(source, out / "pretrain", dirs_exist_ok=True)
        return origin
    return None


def machine() -> dict:
    """Where a run ran: CPU, cores, torch version, torch threads, GPU (None without one)."""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "gpu": gpu,
    }


def run_claimed(spec: RunSpec, level: str, root: str, eager: bool = False) -> str:
    """Train the run under its directory's lock (:mod:`mfwrap.bench.lock`), one torch thread; returns "ran",
    "failed" (traceback in its ``error.json``), "elsewhere" (another process holds the lock) or "done"
    (finished by another process since the list of runs to train was made). The local pool and the
    cluster's array tasks (:mod:`mfwrap.bench.cluster`) both train runs through it."""
    torch.set_num_threads(1)
    out = Path(root) / spec.experiment / spec.name
    lock = DirectoryLock(out)
    if not lock.acquire():
        return "elsewhere"
    try:
        if finished(Path(root), spec, level) is not None:
            return "done"
        run_one(spec, level, root, eager)
        return "ran"
    except Exception:  # recorded, reported, not fatal to the other runs
        text = traceback.format_exc()
        write_text(out / "error.json", json.dumps({"spec": spec.as_dict(), "traceback": text}, indent=1))
        return "failed"
    finally:
        lock.release()


def _run_in_worker(spec: RunSpec, level: str, root: str, eager: bool = False) -> tuple[RunSpec, str]:
    return spec, run_claimed(spec, level, root, eager)


def die_with_parent(parent: int) -> None:
    """Pool worker initializer: end this worker when the launcher ``parent`` dies, so that no orphan trains on
    after a kill (its run's lock, left behind, is then stale). Linux: the kernel kills it at the parent's
    death (``prctl(PR_SET_PDEATHSIG, SIGKILL)``). Every POSIX system: a daemon thread checks each second
    that ``parent`` is still its parent (an orphan is re-parented) and exits otherwise, which also covers a
    parent that died before prctl ran. On Windows a process keeps its dead parent's pid: a worker there
    finishes the run it is training, then finds no work."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent watch", daemon=True).start()


def finished(root: Path, spec: RunSpec, level: str) -> RunResult | None:
    """The run's result under ``root`` if it has finished there; a damaged result, or the result of another
    run (another identity: level, dataset version, backbone arguments, ...), is warned about and is none."""
    path = root / spec.experiment / spec.name / "result.json"
    result = read_result(path)
    if result is None:
        return None
    if changed := differences(identity_of(result), run_identity(spec, level)):
        warn_damaged(path, ValueError(f"{path}: the result of another run ({'; '.join(changed)})"), "not reused")
        return None
    return result


def restore_reported(specs: Sequence[RunSpec], level: str, root: Path, report: Path) -> int:
    """Write ``result.json`` of runs that a committed report (``report/<experiment>.json``) already
    holds at this level, with the identity of the run wanted (:mod:`mfwrap.bench.identity`), so that a
    fresh checkout does not train them again; returns how many."""
    restored = 0
    for experiment in {s.experiment for s in specs}:
        path = report / f"{experiment}.json"
        if not path.is_file():
            continue
        try:
            known = {run.name: run for run in read_runs(path) if run.level == level}
        except ValueError as error:
            warn_damaged(path, error, "no run restored from it")
            continue
        other = sorted(n for s in specs if (n := s.name) in known and identity_of(known[n]) != run_identity(s, level))
        if other:
            print(
                f"warning: {path}: {len(other)} runs of another identity not restored: {', '.join(other)}",
                file=sys.stderr,
            )
        known = {name: run for name, run in known.items() if name not in other}
        for spec in specs:
            target = root / spec.experiment / spec.name / "result.json"
            if spec.experiment == experiment and spec.name in known and read_result(target) is None:
                target.parent.mkdir(parents=True, exist_ok=True)
                known[spec.name].write(target)
                restored += 1
    return restored


def reuse_finished(specs: Sequence[RunSpec], level: str, root: Path) -> int:
    """Copy the result of a finished identical run (same identity, another experiment) to each run of
    ``specs`` that has none; returns how many were copied."""
    copied = 0
    for spec in specs:
        target = root / spec.experiment / spec.name / "result.json"
        if read_result(target) is not None:  # done, or another run's: never overwritten
            continue
        sources = [p for p in sorted(root.glob(f"*/{spec.name}/result.json")) if p != target]
        results = [read_result(p) for p in sources]
        wanted = run_identity(spec, level)
        source, result = next(
            ((p, r) for p, r in zip(sources, results) if r and identity_of(r) == wanted), (None, None)
        )
        if result is None:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        result.with_experiment(spec.experiment, f"{source.parent.parent.name}/{spec.name}").write(target)
        copied += 1
    return copied


def run_suite(
    experiments: Sequence[str],
    level: str,
    seeds: Sequence[int],
    root: str | Path,
    *,
    jobs: int = 1,
    backbone: str | None = None,
    report: str | Path | None = None,
    eager: bool = False,
    cluster=None,
    wait: bool = True,
    only: Sequence[str] | None = None,
) -> dict:
    """Run every missing run of ``experiments`` at ``level`` (runs in ``report``'s committed results
    count as done; ``eager``: see :func:`run_one`), each under its directory's lock, so that launchers
    sharing a root share the work; returns {"total", "ran", "failed": names, "elsewhere": names of the
    runs another process was training, "jobs": submitted job ids}. Workers (``jobs`` > 1) die with this
    process (:func:`die_with_parent`). With ``cluster`` (:class:`mfwrap.bench.cluster.ClusterOptions`) the
    runs are submitted as a job array instead, and waited for unless ``wait`` is False; ``only``: train
    only the runs of these names (e.g. the failed and stale ones, :func:`mfwrap.bench.cluster.status`)."""
    specs = []
    for name in experiments:
        if name not in EXPERIMENTS:
            raise ValueError(f"unknown experiment {name!r}; known are {sorted(EXPERIMENTS)}")
        extra = {"backbone": backbone} if backbone else {}
        specs += EXPERIMENTS[name](LEVELS[level], list(seeds), **extra)
    if Path(root).is_dir():  # temporaries older than any write in progress in another launcher's runs
        remove_interrupted_writes(root, older_than_s=600)
    if report is not None:
        restored = restore_reported(specs, level, Path(root), Path(report))
        if restored:
            print(f"{restored} runs restored from the committed results in {report}")
    root = Path(root)
    shared = reuse_finished(specs, level, root)
    if shared:
        print(f"{shared} runs reused from other experiments' identical runs")
    todo = [s for s in specs if finished(root, s, level) is None]
    first_by_name: dict[str, RunSpec] = {}
    for spec in todo:
        first_by_name.setdefault(spec.name, spec)
    to_train = list(first_by_name.values())  # a run two experiments share is trained once
    if only is not None:
        to_train = [s for s in to_train if s.name in set(only)]
    print(f"{len(specs)} runs at level {level}: {len(specs) - len(todo)} done, {len(todo)} to run", flush=True)
    outcomes: dict[str, list[str]] = {"ran": [], "failed": [], "elsewhere": [], "done": []}
    job_ids: list[str] = []
    if cluster is not None:
        from mfwrap.bench.cluster import submit_runs
        from mfwrap.bench.cluster import wait as wait_for

        submitted = submit_runs(to_train, level, root, cluster, eager)
        job_ids = [str(job.job_id) for job in submitted]
        print(
            f"submitted {len(to_train)} runs as {len(submitted)} {cluster.executor} job(s), {cluster.slots} run(s) "
            f"at once in each: {', '.join(job_ids) or 'none'} (logs in {cluster.folder})",
            flush=True,
        )
        if not wait:
            print("not waiting: `mfwrap bench status` shows their progress, `mfwrap bench report` reports them")
            return {"total": len(specs), "ran": 0, "failed": [], "elsewhere": [], "jobs": job_ids}
        for name, outcome in wait_for(submitted).items():
            outcomes[outcome].append(name)
        to_train = []
    with tqdm(total=len(to_train), desc="runs", disable=not to_train) as bar:
        if jobs > 1:
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(
                jobs, mp_context=context, initializer=die_with_parent, initargs=(os.getpid(),)
            ) as pool:
                futures = [pool.submit(_run_in_worker, s, level, str(root), eager) for s in to_train]
                for future in concurrent.futures.as_completed(futures):
                    spec, outcome = future.result()
                    outcomes[outcome].append(spec.name)
                    bar.set_postfix_str(spec.name[-40:])
                    bar.update()
        else:
            for spec in to_train:
                bar.set_postfix_str(spec.name[-40:])
                outcomes[_run_in_worker(spec, level, str(root), eager)[1]].append(spec.name)
                bar.update()
    reuse_finished(specs, level, root)
    for name in outcomes["failed"]:
        print(f"FAILED {name} (traceback in its error.json)")
    for name in outcomes["elsewhere"]:
        print(f"RUNNING ELSEWHERE {name} (its directory is locked by another process: its .lock names it)")
    done = len(specs) - len(todo) + len(outcomes["done"])
    print(
        f"{len(outcomes['ran'])} ran, {len(outcomes['failed'])} failed, {done} were done, "
        f"{len(outcomes['elsewhere'])} running elsewhere (rerun when they finish to report them)",
        flush=True,
    )
    return {
        "total": len(specs),
        "ran": len(outcomes["ran"]),
        "failed": outcomes["failed"],
        "elsewhere": outcomes["elsewhere"],
        "jobs": job_ids,
    }


def frame_counts(spec: RunSpec, level: Level) -> tuple[int, int]:
    """(N_high, N_low) training frames of a run, from the dataset recipe (LMFP: no data needed; an
    upper bound for a region, whose pool is a part of the set) or the shipped files (Li3PS4)."""
    if spec.dataset == "li3ps4":
        splits = make_splits(spec, level)
        return len(splits.train_high), len(splits.train_low)
    from mfwrap.datasets.lmfp_frames import SIZES

    recipe = SIZES[level.lmfp_size]
    n_high = spec.n_high if spec.n_high is not None else recipe.n_high - recipe.n_high_test - level.n_val
    n_low = spec.n_low if spec.n_low is not None else level.n_low_all if level.n_low_all is not None else recipe.n_low
    return n_high, n_low


def measured_seconds_per_step(root: Path, experiment: str, level: str) -> float | None:
    """Median wall seconds per optimiser step of the finished, not copied runs of ``experiment`` at
    ``level`` under ``root`` (including evaluation and compilation); None if there are none."""
    rates = []
    for path in root.glob(f"{experiment}/*/result.json"):
        result = read_result(path)
        if result is not None and result.level == level and not result.reused_from and result.steps and result.wall_s:
            rates.append(result.wall_s / result.steps)
    return float(np.median(rates)) if rates else None


def plan_suite(
    experiments: Sequence[str],
    level: str,
    seeds: Sequence[int],
    backbone: str | None = None,
    root: str | Path | None = None,
    seconds_per_step: float = 1.0,
) -> dict:
    """What running ``experiments`` costs: runs and optimiser steps (batch size BATCH_SIZE) per
    experiment, a run two experiments share and a shared pre-training stage counted once; under
    ``converged`` the ceiling of steps (early stopping only lowers it). ``seconds_per_step`` per
    experiment: measured on the finished runs under ``root`` where there are some, else the given one.
    ``done`` / ``done_wall_s``: the runs finished under ``root`` and the wall seconds they took (one
    run's own time; runs that ran side by side overlap). ``left_steps``: the steps of the runs not
    finished there, with their pre-training (an upper bound: a killed run resumes part-way and a
    pre-trained model another run left behind is reused)."""
    lvl = LEVELS[level]
    extra = {"backbone": backbone} if backbone else {}
    seen: set[str] = set()
    pretrained: set[tuple] = set()
    pretrained_left: set[tuple] = set()
    rows = {}
    for name in experiments:
        specs = EXPERIMENTS[name](lvl, list(seeds), **extra)
        measured = measured_seconds_per_step(Path(root), name, level) if root is not None else None
        row = rows[name] = {
            "runs": len(specs),
            "trained": 0,
            "steps": 0,
            "pretrain_steps": 0,
            "seconds_per_step": measured or seconds_per_step,
            "measured": measured is not None,
            "done": 0,
            "done_wall_s": 0.0,
            "left_steps": 0,
        }
        for spec in specs:
            if spec.name in seen:
                continue
            seen.add(spec.name)
            result = finished(Path(root), spec, level) if root is not None else None
            done = result is not None
            if done:
                row["done"] += 1
                row["done_wall_s"] += result.wall_s or 0.0
            n_high, n_low = frame_counts(spec, lvl)
            n_mf = n_high + n_low
            own = n_mf if METHODS[spec.method].multi_fidelity else n_high
            steps = epochs_for(spec, lvl, n_mf, own, BATCH_SIZE) * -(-own // BATCH_SIZE)
            row["trained"] += 1
            row["steps"] += steps
            row["left_steps"] += 0 if done else steps
            key = (spec.dataset, spec.backbone, spec.seed, n_low, spec.protocol == "converged")
            if METHODS[spec.method].pretrains:
                pretrain = lvl.epochs * -(-n_low // BATCH_SIZE)
                if key not in pretrained:
                    pretrained.add(key)
                    row["pretrain_steps"] += pretrain
                if not done and key not in pretrained_left:
                    pretrained_left.add(key)
                    row["left_steps"] += pretrain
    return rows
