"""Which implementation runs the scatter sum: selection, override and reporting.

Backends:
    "torch"          native ``index_add`` (always available; the automatic choice on CPU).
    "torch_scatter"  the ``torch_scatter`` extension (``torch_scatter.scatter``).
    "triton"         our Triton kernels (``mfwrap.ops.triton_kernels``): the automatic
                     choice for CUDA tensors when ``triton`` imports. On CPU tensors they run
                     only under the Triton interpreter (``TRITON_INTERPRET=1`` set before
                     ``triton`` is first imported), which is slow and meant for tests.
    "auto"           CUDA: triton, else torch_scatter, else torch. CPU: torch.

The requested name comes from, in order: the innermost :func:`use_backend` context, the last
:func:`set_backend` call, the environment variable ``MFWRAP_SCATTER_BACKEND``, then "auto".
Resolution looks only at the tensor's device type and Python state, never at tensor values, so
it adds no host-device synchronisation. The state is process-wide (not per thread); an op's
backward runs on the backend its forward used. The first resolution for each (device type,
backend) pair is logged at INFO level on the ``mfwrap.ops`` logger.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from contextlib import contextmanager
from types import ModuleType
from typing import Iterator

import torch

ENV_VAR = "MFWRAP_SCATTER_BACKEND"
BACKENDS = ("torch", "torch_scatter", "triton")
_CHOICES = BACKENDS + ("auto",)
_MODULES = {"torch_scatter": "mfwrap.ops.torch_scatter_impl", "triton": "mfwrap.ops.triton_kernels"}
_PACKAGES = {"torch_scatter": "torch_scatter", "triton": "triton"}

logger = logging.getLogger("mfwrap.ops")

_overrides: list[str] = []  # use_backend stack, innermost last
_selected: str | None = None  # set_backend's choice (None: not set)
_loaded: dict[str, ModuleType | Exception] = {}
_logged: set[tuple[str, str]] = set()


def _check_name(name: str, source: str) -> str:
    if name not in _CHOICES:
        raise ValueError(f"{source}: unknown scatter backend {name!r}; choose one of {_CHOICES}")
    return name


def _load(name: str) -> ModuleType:
    """Import the implementation module of a non-native backend once; re-raise its import error."""
    if name not in _loaded:
        try:
            _loaded[name] = importlib.import_module(_MODULES[name])
        except Exception as error:  # noqa: BLE001 - an extension may fail with any error type
            _loaded[name] = error
    found = _loaded[name]
    if isinstance(found, Exception):
        raise ImportError(f"scatter backend {name!r} is not usable here: {found}") from found
    return found


def is_available(name: str) -> bool:
    """Whether backend ``name`` imports in this environment ("torch" always does)."""
    _check_name(name, "is_available")
    if name in ("torch", "auto"):
        return True
    try:
        _load(name)
    except ImportError:
        return False
    return True


def _installed() -> list[str]:
    """Backends whose package is installed (found without importing it)."""
    return ["torch"] + [name for name, package in _PACKAGES.items() if importlib.util.find_spec(package)]


def available_backends() -> list[str]:
    """The backends that import here, e.g. ``["torch", "torch_scatter", "triton"]``."""
    return [name for name in BACKENDS if is_available(name)]


def triton_interpreted() -> bool:
    """Whether Triton kernels run in the interpreter (so on CPU tensors) in this process."""
    return is_available("triton") and _load("triton").INTERPRETED


def requested_backend() -> str:
    """The name asked for (possibly "auto"), before resolving it for a device."""
    if _overrides:
        return _overrides[-1]
    if _selected is not None:
        return _selected
    return _check_name(os.environ.get(ENV_VAR, "auto").strip().lower(), ENV_VAR)


def set_backend(name: str) -> None:
    """Select the scatter backend for the whole process: "torch", "torch_scatter", "triton" or "auto".

    Raises ValueError for an unknown name and ImportError for a backend that does not import.
    """
    global _selected
    _check_name(name, "set_backend")
    if name not in ("auto", "torch"):
        _load(name)
    _selected = name


@contextmanager
def use_backend(name: str) -> Iterator[str]:
    """Context manager selecting backend ``name`` inside the ``with`` block (nests; restores on exit)."""
    _check_name(name, "use_backend")
    if name not in ("auto", "torch"):
        _load(name)
    _overrides.append(name)
    try:
        yield name
    finally:
        _overrides.pop()


def _auto(device_type: str) -> str:
    if device_type == "cuda":
        for name in ("triton", "torch_scatter"):
            if is_available(name):
                return name
    return "torch"


def get_backend(device: torch.device | str = "cpu") -> str:
    """The backend that a scatter on a tensor on ``device`` would run now (never "auto")."""
    device_type = torch.device(device).type
    requested = requested_backend()
    name = _auto(device_type) if requested == "auto" else requested
    if (device_type, name) not in _logged:
        _logged.add((device_type, name))
        how = "automatic choice" if requested == "auto" else "requested"
        logger.info(
            "scatter backend for %s tensors: %s (%s; installed: %s)", device_type, name, how, ", ".join(_installed())
        )
    return name


def implementation(name: str) -> ModuleType:
    """The module implementing backend ``name`` ("torch_scatter" or "triton")."""
    return _load(name)
