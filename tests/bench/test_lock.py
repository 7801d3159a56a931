"""A run directory is trained by one live process: its lock, launchers sharing a root, workers dying with the parent."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from mfwrap.bench import runner
from mfwrap.bench.lock import DirectoryLock, pid_alive

REPO = Path(__file__).resolve().parents[2]


def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


def _write_lock(directory: Path, host: str, pid: int, heartbeat_age_s: float) -> None:
    started = time.time() - heartbeat_age_s
    (directory / ".lock").write_text(json.dumps({"host": host, "pid": pid, "started": started, "heartbeat": started}))


def test_a_live_lock_is_respected_and_a_stale_one_taken_over(tmp_path):
    held, other = DirectoryLock(tmp_path), DirectoryLock(tmp_path, stale_after_s=600)
    assert held.acquire() and not other.acquire()  # a live process holds it
    held.release()
    assert not (tmp_path / ".lock").exists()
    here = socket.gethostname()
    for host, pid, age, taken in (
        (here, _dead_pid(), 0, True),  # its process is dead on this host
        ("node-7", os.getpid(), 0, False),  # another host, fresh heartbeat: alive as far as we can tell
        ("node-7", os.getpid(), 700, True),  # another host, heartbeat older than the timeout
    ):
        _write_lock(tmp_path, host, pid, age)
        assert other.acquire() is taken, (host, age)
        if taken:
            assert other.holder()["pid"] == os.getpid()
            other.release()
    (tmp_path / ".lock").write_text("")  # its creator killed between creating and writing it
    assert not other.acquire()
    os.utime(tmp_path / ".lock", (time.time() - 700,) * 2)
    assert other.acquire()
    other.release()


def test_the_heartbeat_is_refreshed_while_the_lock_is_held(tmp_path):
    lock = DirectoryLock(tmp_path, heartbeat_s=0.05)
    assert lock.acquire()
    first = lock.holder()["heartbeat"]
    time.sleep(0.5)
    assert lock.holder()["heartbeat"] > first and lock.holder()["started"] < lock.holder()["heartbeat"]
    lock.release()


def test_a_run_another_process_holds_is_skipped_and_reported(quick_copy, capsys):
    root = quick_copy.root / "quick"
    result = sorted(root.glob("learning_curve/*/result.json"))[0]
    result.unlink()
    holder = DirectoryLock(result.parent)
    assert holder.acquire()
    outcome = runner.run_suite(["learning_curve"], "quick", [0], root)
    assert outcome["ran"] == 0 and outcome["elsewhere"] == [result.parent.name] and not result.exists()
    assert f"RUNNING ELSEWHERE {result.parent.name}" in capsys.readouterr().out
    holder.release()
    assert runner.run_suite(["learning_curve"], "quick", [0], root)["ran"] == 1 and result.exists()


def _environment(cache: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "MFWRAP_CACHE": str(cache), "OMP_NUM_THREADS": "1"}


def _locks(root: Path) -> dict[Path, dict]:
    """{lock file: what it holds} of the runs under ``root`` now."""
    found = {}
    for path in root.glob("*/*/*/.lock"):
        try:
            found[path] = json.loads(path.read_text())
        except (OSError, ValueError):  # being written or removed
            pass
    return found


def _wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_workers_die_with_their_killed_parent(quick_bench, tmp_path):
    """The trial: SIGKILL the parent of ``mfwrap bench --jobs 2`` once a worker holds a run's lock (the signal)."""
    root = tmp_path / "runs"
    command = [sys.executable, "-m", "mfwrap.cli", "bench", "low_fidelity_size", "--jobs", "2", "--root", str(root)]
    parent = subprocess.Popen(
        [*command, "--out", str(tmp_path / "out")],
        env=_environment(quick_bench.cache),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        locks = _wait_for(lambda: _locks(root), 120, "a worker to lock a run")
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    workers = {holder["pid"] for holder in locks.values()}
    assert parent.pid not in workers
    _wait_for(lambda: not any(pid_alive(pid) for pid in workers), 10, f"the workers {workers} to die")
    for path in locks:  # a dead worker's lock is stale: a rerun takes it over
        lock = DirectoryLock(path.parent)
        assert lock.acquire()
        lock.release()


def test_two_launchers_on_one_root_train_each_run_once(quick_bench, tmp_path):
    root = tmp_path / "runs"
    script = (
        "import json; from mfwrap.bench.runner import run_suite; "
        f"print(json.dumps(run_suite(['low_fidelity_size'], 'quick', [0], {str(root / 'quick')!r})))"
    )

    def launch():
        return subprocess.Popen(
            [sys.executable, "-c", script], env=_environment(quick_bench.cache), stdout=subprocess.PIPE, text=True
        )

    first = launch()
    _wait_for(lambda: _locks(root), 120, "the first launcher to lock a run")  # it is training one now
    second = launch()
    outcomes = [json.loads(process.communicate(timeout=300)[0].splitlines()[-1]) for process in (first, second)]
    assert [o["failed"] for o in outcomes] == [[], []]
    assert sum(o["ran"] for o in outcomes) == 2  # two runs, each trained once
    assert len(list(root.glob("quick/low_fidelity_size/*/result.json"))) == 2 and not _locks(root)
