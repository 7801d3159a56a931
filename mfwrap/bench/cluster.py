"""The suite on a cluster scheduler: runs submitted as job arrays through submitit, and the status of a root.

:func:`submit_runs` packs the runs still to train into batches of ``gpus_per_job × runs_per_gpu`` (CPU
jobs: ``runs_per_gpu`` at once) and submits one array task per batch through `submitit
<https://github.com/facebookincubator/submitit>`_ (Slurm; its local executor runs the same path on
this machine, which is how the tests exercise it). A task (:func:`run_batch`) trains its runs in
``slots`` processes side by side, slot *i* on GPU *i* mod ``gpus_per_job``, each run exactly as the
local path trains it (:func:`mfwrap.bench.runner.run_claimed`): in its own run directory under the
shared root, claimed with its directory's lock (:mod:`mfwrap.bench.lock`: atomic create, host, pid,
heartbeat), so two launchers, a resubmitted array or a local run beside a cluster run never train the
same run; a run whose job was killed leaves a stale lock that the next claimant takes over, and
training resumes from the run's checkpoints. Resume, restore and ``mfwrap bench report`` work on the
root unchanged.

:func:`status` reads a root: per experiment, the runs done, running (host, since, last heartbeat),
stale (lock left by a dead process or without heartbeat: killed), failed (the error's last line) and
pending (no result, no lock, no error).
"""

from __future__ import annotations

import json
import os
import queue
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

EXECUTORS = ("local", "slurm", "submitit-local")  # local: this machine's process pool (no submitit)


@dataclass(frozen=True)
class ClusterOptions:
    """How runs are submitted (``mfwrap bench --executor ...``).

    Attributes:
        executor: "slurm", or "submitit-local" (submitit's local executor: the cluster path on this machine).
        folder: where submitit keeps its job files and logs (pickled tasks, stdout/stderr per job).
        partition: the Slurm partition (None: the cluster's default).
        gpus_per_job: GPUs per array task (0: CPU jobs).
        runs_per_gpu: runs side by side per GPU (per job without GPUs).
        time_min: a task's time limit, minutes; a task killed at its limit leaves its runs resumable.
        mem_gb: memory per task, GB (None: the partition's default).
        cpus_per_run: CPU cores per run (a task asks for ``slots × cpus_per_run``).
        max_parallel: array tasks running at once (None: the scheduler decides).
        extra: further submitit parameters (e.g. {"slurm_account": "..."}).
    """

    executor: str = "slurm"
    folder: str = "runs/submitit"
    partition: str | None = None
    gpus_per_job: int = 1
    runs_per_gpu: int = 1
    time_min: int = 240
    mem_gb: float | None = None
    cpus_per_run: int = 1
    max_parallel: int | None = None
    extra: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.executor not in ("slurm", "submitit-local"):
            raise ValueError(f"executor {self.executor!r} does not submit jobs; choose slurm or submitit-local")
        for name in ("runs_per_gpu", "time_min", "cpus_per_run"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.gpus_per_job < 0:
            raise ValueError(f"gpus-per-job must be 0 or more, got {self.gpus_per_job}")

    @property
    def slots(self) -> int:
        """Runs side by side in one task."""
        return max(self.gpus_per_job, 1) * self.runs_per_gpu


def executor_for(options: ClusterOptions):
    """The submitit executor of ``options``, its parameters set."""
    try:
        import submitit
    except ImportError as error:
        raise ImportError(
            "the cluster executors need submitit: pip install 'submitit>=1.5' (or mfwrap's bench extra)"
        ) from error
    if options.executor == "submitit-local":
        executor = submitit.LocalExecutor(folder=options.folder)
        executor.update_parameters(timeout_min=options.time_min, gpus_per_node=options.gpus_per_job)
        return executor
    executor = submitit.SlurmExecutor(folder=options.folder)
    parameters: dict[str, Any] = {
        "time": options.time_min,
        "cpus_per_task": options.slots * options.cpus_per_run,
        "ntasks_per_node": 1,
        "nodes": 1,
    }
    if options.gpus_per_job:
        parameters["gpus_per_node"] = options.gpus_per_job
    if options.partition:
        parameters["partition"] = options.partition
    if options.mem_gb is not None:
        parameters["mem"] = f"{int(options.mem_gb * 1024)}M"
    if options.max_parallel is not None:
        parameters["array_parallelism"] = options.max_parallel
    parameters.update(dict(options.extra))
    executor.update_parameters(**parameters)
    return executor


def batches(specs: Sequence[Any], size: int) -> list[list[Any]]:
    """``specs`` in consecutive batches of ``size`` (the last one shorter)."""
    return [list(specs[i : i + size]) for i in range(0, len(specs), size)]


def _slot(specs: list, level: str, root: str, eager: bool, gpu: int | None, outcomes: Any) -> None:
    """One slot of a task: its runs one after another (in a process of its own, pinned to ``gpu``)."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)  # before CUDA is first used in this process
    from mfwrap.bench.runner import run_claimed

    for spec in specs:
        outcomes.put((spec.name, run_claimed(spec, level, root, eager)))


def run_batch(specs: Sequence[Any], level: str, root: str, eager: bool = False, slots: int = 1, gpus: int = 0) -> dict:
    """An array task: train ``specs`` in ``slots`` processes side by side (round robin), slot *i* on GPU
    *i* mod ``gpus`` (``gpus`` 0: no pinning); returns {run name: "ran" | "failed" | "elsewhere" | "done"}."""
    import multiprocessing

    specs = list(specs)
    if slots <= 1 or len(specs) <= 1:
        from mfwrap.bench.runner import run_claimed

        return {spec.name: run_claimed(spec, level, root, eager) for spec in specs}
    context = multiprocessing.get_context("spawn")
    outcomes = context.Queue()
    processes = [
        context.Process(
            target=_slot,
            args=(specs[i::slots], level, root, eager, (i % gpus) if gpus else None, outcomes),
            name=f"mfwrap slot {i}",
        )
        for i in range(min(slots, len(specs)))
    ]
    for process in processes:
        process.start()
    found: dict[str, str] = {}
    while len(found) < len(specs):  # every run reports, whatever its outcome, unless its slot process dies
        try:
            name, outcome = outcomes.get(timeout=5.0)
            found[name] = outcome
        except queue.Empty:
            if not any(process.is_alive() for process in processes):
                break
    for process in processes:
        process.join()
    for spec in specs:  # a slot killed (out of memory): its runs' locks are stale, a resubmission resumes them
        found.setdefault(spec.name, "failed")
    return found


def submit_runs(specs: Sequence[Any], level: str, root: str | Path, options: ClusterOptions, eager: bool = False):
    """Submit ``specs`` (runs to train) as one job array; returns the submitit jobs (one per batch)."""
    executor = executor_for(options)
    groups = batches(list(specs), options.slots)
    if not groups:
        return []
    with executor.batch():
        jobs = [
            executor.submit(run_batch, group, level, str(root), eager, options.slots, options.gpus_per_job)
            for group in groups
        ]
    return jobs


def wait(jobs: Sequence[Any], poll_s: float = 5.0, log=print) -> dict[str, str]:
    """Wait for ``jobs``; returns every run's outcome (a task that died: each of its runs "failed")."""
    outcomes: dict[str, str] = {}
    for job in jobs:
        try:
            outcomes.update(job.result())
        except Exception as error:  # the task itself died (killed, out of time, out of memory)
            log(f"job {job.job_id} ended without a result ({type(error).__name__}): its runs resume when resubmitted")
    return outcomes


# ---------------------------------------------------------------------------------------------- status


def run_state(directory: Path, stale_after_s: float = 600.0) -> dict[str, Any]:
    """The state of one run directory: {"state": done | running | stale | failed | pending, ...details}."""
    from mfwrap.bench.lock import DirectoryLock
    from mfwrap.bench.result import read_result

    if read_result(directory / "result.json") is not None:
        return {"state": "done"}
    lock = DirectoryLock(directory, stale_after_s=stale_after_s)
    if lock.path.exists():
        holder = lock.holder()
        details = {"host": (holder or {}).get("host"), "pid": (holder or {}).get("pid")}
        if holder is not None:
            details["since"] = time.strftime("%Y-%m-%d %H:%M", time.localtime(holder.get("started", 0)))
            details["heartbeat_age_s"] = round(time.time() - holder.get("heartbeat", 0))
        return {"state": "stale" if lock.stale(holder) else "running", **details}
    error = directory / "error.json"
    if error.is_file():
        try:
            text = json.loads(error.read_text()).get("traceback", "")
        except (OSError, ValueError):
            text = "error.json unreadable"
        last = [line for line in text.strip().splitlines() if line.strip()]
        return {"state": "failed", "error": last[-1] if last else "unknown error"}
    return {"state": "pending"}


STATES = ("done", "running", "stale", "failed", "pending")


def status(specs: Sequence[Any], root: str | Path, stale_after_s: float = 600.0) -> dict[str, dict[str, list]]:
    """{experiment: {state: [(run name, details), ...]}} of ``specs`` under ``root`` (a level's folder)."""
    found: dict[str, dict[str, list]] = {}
    for spec in specs:
        state = run_state(Path(root) / spec.experiment / spec.name, stale_after_s)
        found.setdefault(spec.experiment, {s: [] for s in STATES})[state.pop("state")].append((spec.name, state))
    return found


def status_text(found: dict[str, dict[str, list]]) -> str:
    """The table of :func:`status` and, below it, the running, stale and failed runs one per line."""
    lines = [f"{'experiment':<20}" + "".join(f"{s:>9}" for s in STATES)]
    for experiment, states in found.items():
        lines.append(f"{experiment:<20}" + "".join(f"{len(states[s]):>9}" for s in STATES))
    for experiment, states in found.items():
        for name, details in states["running"]:
            lines.append(
                f"running  {experiment}/{name}: {details.get('host')} pid {details.get('pid')} since "
                f"{details.get('since')}, heartbeat {details.get('heartbeat_age_s')} s ago"
            )
        for name, details in states["stale"]:
            lines.append(
                f"stale    {experiment}/{name}: lock of {details.get('host')} pid {details.get('pid')} "
                "(process gone or silent: killed); resubmit to resume it"
            )
        for name, details in states["failed"]:
            lines.append(f"failed   {experiment}/{name}: {details['error']} (traceback in its error.json)")
    return "\n".join(lines)
