"""A lock on a directory that one process works in (a run directory of the benchmark suite).

The lock is the file ``<directory>/.lock``, created with ``O_CREAT | O_EXCL`` (atomic on local file
systems and NFS v3 and later), holding JSON ``{"host", "pid", "started", "heartbeat"}`` (times in
seconds since the epoch). While it holds the lock, the holder rewrites ``heartbeat`` every
``heartbeat_s`` seconds from a daemon thread (atomically: a reader sees the old or the new file).

A lock is *stale*, and another process may take it over, when its process is dead on this host
(same host name, no process with its pid) or, on any host, when its heartbeat is older than
``stale_after_s`` (a crashed node, a machine suspended, a pid reused by another program). A lock
file that is not readable JSON (its creator killed between creating and writing it) is stale once
it is ``stale_after_s`` old. Taking a stale lock over first renames it aside (atomic), then checks
that what it moved is the lock it judged stale (else puts it back), so that of two processes
reclaiming one lock only one gets it.

On Windows a pid is never probed (``os.kill`` would end the process): only the heartbeat makes a lock stale.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from mfwrap.files import write_text

LOCK_NAME = ".lock"


def pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` runs on this host (a zombie counts as dead; Windows: always True)."""
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:  # Linux: a zombie (exited, not yet reaped) is dead
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class DirectoryLock:
    """The lock of ``directory`` for this process (module docstring); ``acquire`` / ``release`` or ``with``."""

    def __init__(self, directory: str | os.PathLike, heartbeat_s: float = 30.0, stale_after_s: float = 600.0):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self.info: dict | None = None  # what our lock file holds, while we hold it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def holder(self) -> dict | None:
        """What the lock file holds now (None: no lock file, or not readable)."""
        try:
            data = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def stale(self, holder: dict | None) -> bool:
        """Whether the lock file holding ``holder`` (None: unreadable) may be taken over."""
        now = time.time()
        if holder is None:
            try:
                return now - self.path.stat().st_mtime > self.stale_after_s
            except FileNotFoundError:
                return True
        if holder.get("host") == socket.gethostname() and not pid_alive(int(holder.get("pid", -1))):
            return True
        return now - float(holder.get("heartbeat", 0)) > self.stale_after_s

    def acquire(self) -> bool:
        """Take the lock (a stale one is taken over); False if a live process holds it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    seen = self.path.read_bytes()
                except FileNotFoundError:
                    continue
                holder = self.holder() if seen else None
                if not self.stale(holder) or not self._take_over(seen):
                    return False
                continue
            now = time.time()
            self.info = {"host": socket.gethostname(), "pid": os.getpid(), "started": now, "heartbeat": now}
            with os.fdopen(descriptor, "w") as stream:
                json.dump(self.info, stream)
                stream.flush()
                os.fsync(stream.fileno())
            self._stop.clear()
            self._thread = threading.Thread(target=self._beat, name=f"heartbeat {self.path}", daemon=True)
            self._thread.start()
            return True
        return False

    def _take_over(self, seen: bytes) -> bool:
        """Remove the stale lock file whose bytes were ``seen``; False if another process changed it meanwhile."""
        aside = self.path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}.{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:  # another process removed it first
            return True
        if aside.read_bytes() != seen:  # a live holder's heartbeat, or a new lock: put it back
            try:
                os.link(aside, self.path)
            except OSError:
                pass
            aside.unlink()
            return False
        aside.unlink()
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if not self._ours(self.holder()):
                return  # lost (taken over after a long pause): the new holder's file is left alone
            self.info = {**self.info, "heartbeat": time.time()}
            write_text(self.path, json.dumps(self.info))

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._ours(self.holder()):
            self.path.unlink(missing_ok=True)
        self.info = None

    def _ours(self, holder: dict | None) -> bool:
        keys = ("host", "pid", "started")
        return self.info is not None and holder is not None and all(holder.get(k) == self.info[k] for k in keys)

    def __enter__(self) -> DirectoryLock:
        if not self.acquire():
            raise RuntimeError(f"{self.directory} is locked by {self.holder()}")
        return self

    def __exit__(self, *exc) -> None:
        self.release()
