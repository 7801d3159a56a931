"""The suite through a cluster scheduler (mfwrap.bench.cluster), exercised with submitit's local executor: the
same results as the local path, a killed job's run finished by a resubmission, two launchers sharing the runs,
and the status of a root."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from mfwrap.bench.cluster import ClusterOptions, batches, run_state, status
from mfwrap.bench.grid import EXPERIMENTS, LEVELS
from mfwrap.bench.runner import run_suite

LEVEL = "quick"


def _options(tmp_path: Path, runs_at_once: int = 2) -> ClusterOptions:
    return ClusterOptions(
        executor="submitit-local", folder=str(tmp_path / "submitit"), gpus_per_job=0, runs_per_gpu=runs_at_once
    )


def _tests(root: Path) -> dict[str, dict]:
    """{run name: its test errors} of every finished run under ``root``."""
    return {
        path.parent.name: json.loads(path.read_text())["test"]
        for path in sorted((root / "learning_curve").glob("*/result.json"))
    }


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_the_cluster_path_gives_the_results_of_the_local_path(tmp_path):
    local, cluster = tmp_path / "local", tmp_path / "cluster"
    run_suite(["learning_curve"], LEVEL, [0], local)
    outcome = run_suite(["learning_curve"], LEVEL, [0], cluster, cluster=_options(tmp_path))
    assert outcome["ran"] == 4 and not outcome["failed"] and len(outcome["jobs"]) == 2  # 2 runs at once per job
    ours, theirs = _tests(cluster), _tests(local)
    assert set(ours) == set(theirs) and len(ours) == 4
    for name in ours:
        for fidelity, targets in theirs[name].items():
            for target, errors in targets.items():
                assert ours[name][fidelity][target]["mae"] == pytest.approx(errors["mae"], rel=1e-6), (name, target)
    assert not list(cluster.rglob(".lock"))  # every lock released


def test_a_killed_job_leaves_a_stale_run_that_a_resubmission_finishes(tmp_path):
    root = tmp_path / "runs"
    spec = next(s for s in EXPERIMENTS["learning_curve"](LEVELS[LEVEL], [0]) if s.method == "single_fidelity")
    outcome = run_suite(["learning_curve"], LEVEL, [0], root, cluster=_options(tmp_path, 1), wait=False)
    assert outcome["jobs"]
    lock = root / spec.experiment / spec.name / ".lock"
    deadline = time.time() + 300
    while not (lock.is_file() and lock.read_text().strip()) and time.time() < deadline:
        time.sleep(0.05)
    holder = json.loads(lock.read_text())
    os.kill(holder["pid"], signal.SIGKILL)  # a node that dies: no clean-up, the lock stays
    time.sleep(0.5)
    assert run_state(root / spec.experiment / spec.name)["state"] == "stale"
    found = status([spec], root)
    assert [name for name, _ in found["learning_curve"]["stale"]] == [spec.name]
    # resubmitted (what `mfwrap bench status --resubmit-failed` does): the stale lock is taken over, the run finishes
    again = run_suite(["learning_curve"], LEVEL, [0], root, cluster=_options(tmp_path, 1), only=[spec.name])
    assert again["ran"] == 1 and not again["failed"]
    assert run_state(root / spec.experiment / spec.name)["state"] == "done"
    reference = tmp_path / "reference"
    run_suite(["learning_curve"], LEVEL, [0], reference, only=[spec.name])
    ours, theirs = _tests(root)[spec.name], _tests(reference)[spec.name]
    assert ours["high"]["energy"]["mae"] == pytest.approx(theirs["high"]["energy"]["mae"], rel=1e-6)


def test_two_launchers_on_one_root_train_each_run_once(tmp_path):
    import submitit

    root = tmp_path / "runs"
    first = run_suite(["learning_curve"], LEVEL, [0], root, cluster=_options(tmp_path, 1), wait=False)
    second = run_suite(["learning_curve"], LEVEL, [0], root, cluster=_options(tmp_path, 1))
    jobs = [submitit.LocalJob(folder=tmp_path / "submitit", job_id=job_id) for job_id in first["jobs"]]
    outcomes = [outcome for job in jobs for outcome in job.result().values()]
    outcomes += ["ran"] * second["ran"] + ["elsewhere"] * len(second["elsewhere"])
    assert outcomes.count("ran") == 4  # every run trained once, by one of the two
    assert len(_tests(root)) == 4


def test_status_tells_done_running_failed_and_pending(tmp_path):
    from mfwrap.bench.lock import DirectoryLock

    specs = EXPERIMENTS["learning_curve"](LEVELS[LEVEL], [0])
    root = tmp_path / "runs"
    run_suite(["learning_curve"], LEVEL, [0], root, only=[specs[0].name])
    running = root / specs[1].experiment / specs[1].name
    running.mkdir(parents=True)
    lock = DirectoryLock(running)
    assert lock.acquire()
    failed = root / specs[2].experiment / specs[2].name
    failed.mkdir(parents=True)
    (failed / "error.json").write_text(json.dumps({"traceback": "Traceback ...\nValueError: out of memory\n"}))
    try:
        found = status(specs, root)["learning_curve"]
    finally:
        lock.release()
    assert [n for n, _ in found["done"]] == [specs[0].name]
    assert [n for n, _ in found["running"]] == [specs[1].name] and found["running"][0][1]["pid"] == os.getpid()
    assert found["failed"] == [(specs[2].name, {"error": "ValueError: out of memory"})]
    assert [n for n, _ in found["pending"]] == [specs[3].name]


def test_runs_are_packed_into_jobs_of_gpus_times_runs_per_gpu():
    assert ClusterOptions(gpus_per_job=2, runs_per_gpu=4).slots == 8
    assert ClusterOptions(gpus_per_job=0, runs_per_gpu=3).slots == 3
    assert batches(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    with pytest.raises(ValueError, match="runs-per-gpu must be at least 1"):
        ClusterOptions(runs_per_gpu=0)
