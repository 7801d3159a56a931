"""Writing files atomically and reading torch files without running code.

Every file mfwrap writes (model files, trainer checkpoints, metric logs) goes through
:func:`write_atomic`: the bytes go to a temporary file beside the target, are flushed and
``fsync``\\ ed, then renamed over the target (and the directory entry synced). A reader, or a run
resumed after a kill or power loss, sees the old file or the new one, never a mixture; a write
that fails leaves the old file as it was and no temporary file behind, and raises an ``OSError`` of
the same kind whose message is one line naming the file and the problem (the errno text: "No
space left on device", "Not a directory", "File name too long", ...); a process killed mid-write
leaves one (``.<name>.<8 characters>.tmp``), which :func:`remove_interrupted_writes` deletes.
:func:`check_writable` creates a directory and proves it writable before work that would write there later.

:func:`read_torch` reads with ``torch.load(weights_only=True)``: tensors, numbers, strings,
lists, tuples and dicts only. A pickle that would import or call anything else (how a crafted
file runs code) is refused with :class:`UnsafeFileError` before any of it runs.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch


def default_cache_dir() -> Path:
    """mfwrap's cache (datasets, compiled kernels): ``$MFWRAP_CACHE`` if set, else ``~/.cache/mfwrap``."""
    return Path(os.environ.get("MFWRAP_CACHE") or Path.home() / ".cache" / "mfwrap")


class UnsafeFileError(ValueError):
    """A file asks to import or call objects that a weights-only read does not allow."""


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Create or replace ``path`` with what ``write(stream)`` writes, atomically (see module docstring)."""
    target = Path(path)
    try:
        _make_dir(target.parent)
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as error:
        raise cannot_write(target, error) from error
    try:
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; a saved file gets the usual mode
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise cannot_write(target, error) from error
        raise
    _sync_directory(target.parent)


_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")  # write_atomic's: mkstemp(prefix=".<name>.", suffix=".tmp")


def remove_interrupted_writes(directory: str | os.PathLike, older_than_s: float = 0.0) -> list[Path]:
    """Delete the temporary files that :func:`write_atomic` left in ``directory`` and below when its process was
    killed mid-write, if last modified more than ``older_than_s`` seconds ago (> 0 where another process may
    be writing there now); returns the paths removed. The targets themselves are untouched."""
    removed = []
    now = time.time()
    for path in Path(directory).rglob(".*.tmp"):
        try:
            if _TEMPORARY.match(path.name) and path.is_file() and now - path.stat().st_mtime >= older_than_s:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:  # its writer finished or cleaned it meanwhile
            pass
    return removed


def cannot_write(path: str | os.PathLike, error: OSError) -> OSError:
    """``error`` (of the same type and errno) as one line: "cannot write PATH: <errno text>"."""
    wrapped = type(error)(f"cannot write {path}: {error.strerror or error}")
    wrapped.errno = error.errno
    return wrapped


def check_writable(directory: str | os.PathLike) -> None:
    """Create ``directory`` (and its parents) and write and remove a probe file in it, so that a place
    that cannot be written fails now (an ``OSError`` as :func:`cannot_write` words it), not later."""
    directory = Path(directory)
    probe = directory / f".mfwrap-write-check-{os.getpid()}"
    try:
        _make_dir(directory)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise cannot_write(directory, error) from error


def _make_dir(directory: Path) -> None:
    """Create ``directory`` and its parents; where one of them is a file, NotADirectoryError naming it
    (``mkdir`` says "File exists" or "Not a directory", naming neither)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocking = next((p for p in (directory, *directory.parents) if p.exists() and not p.is_dir()), directory)
        raise NotADirectoryError(errno.ENOTDIR, f"{blocking} is a file, not a folder") from None


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows (others threads may create files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _sync_directory(directory: Path) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def save_torch(payload: Any, path: str | os.PathLike) -> None:
    """``torch.save(payload)`` to ``path`` atomically."""
    write_atomic(path, lambda stream: torch.save(payload, stream))


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    write_atomic(path, lambda stream: stream.write(text.encode("utf-8")))


def read_torch(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> Any:
    """Load a torch file without executing code from it.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is a directory (the message names a ``.pt`` file in it, if any).
        UnsafeFileError: the file references code (classes or functions to call); nothing ran.
        ValueError: the file is not a readable torch file (corrupt, truncated, foreign).
    """
    path = Path(path)
    if path.is_dir():
        inside = sorted(path.glob("*.pt")) or sorted(path.glob("*/best.pt"))
        hint = f", e.g. {inside[0]}" if inside else ""
        raise ValueError(f"{path}: is a directory; give a file in it{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        wanted = re.search(r"GLOBAL (\S+)", str(error))
        if wanted:
            raise UnsafeFileError(
                f"{path}: refused: the file asks to import and call {wanted.group(1)}, which an mfwrap file never "
                "does (weights-only read; nothing from it was executed)"
            ) from error
        raise ValueError(f"{path}: not a readable torch file (corrupt or truncated?): {_first_line(error)}") from error
    except Exception as error:  # torch raises many types for damaged files
        raise ValueError(f"{path}: not a readable torch file (corrupt or truncated?): {_first_line(error)}") from error


def _first_line(error: Exception) -> str:
    """The informative line of torch's message (its weights-only messages start with general advice)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = [
        line for line in lines if not line.startswith(("Weights only load failed", "(1)", "(2)", "Check the", "Please"))
    ]
    return (detail or lines or [type(error).__name__])[0]
