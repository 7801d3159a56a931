"""Choosing the scatter backend: automatic rule, set_backend, use_backend, env var, log line."""

from __future__ import annotations

import logging

import pytest
import torch

from mfwrap import ops
from mfwrap.ops import backend


@pytest.fixture(autouse=True)
def clean_state(monkeypatch):
    """Each test starts with nothing requested and no log lines emitted yet."""
    monkeypatch.setattr(backend, "_selected", None)
    monkeypatch.setattr(backend, "_overrides", [])
    monkeypatch.setattr(backend, "_logged", set())
    monkeypatch.delenv(backend.ENV_VAR, raising=False)


def _pretend_missing(monkeypatch, *names):
    loaded = dict(backend._loaded)
    for name in names:
        loaded[name] = ModuleNotFoundError(f"No module named {name!r}")
    monkeypatch.setattr(backend, "_loaded", loaded)


def test_auto_is_torch_on_cpu_and_prefers_triton_on_cuda(monkeypatch):
    assert ops.get_backend("cpu") == "torch"
    expected_cuda = (
        "triton"
        if backend.is_available("triton")
        else ("torch_scatter" if backend.is_available("torch_scatter") else "torch")
    )
    assert ops.get_backend("cuda") == expected_cuda
    _pretend_missing(monkeypatch, "triton")
    assert ops.get_backend("cuda") == ("torch_scatter" if backend.is_available("torch_scatter") else "torch")
    _pretend_missing(monkeypatch, "triton", "torch_scatter")
    assert ops.get_backend("cuda") == "torch"
    assert ops.available_backends() == ["torch"]


def test_precedence_context_over_set_over_env(monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "torch_scatter" if backend.is_available("torch_scatter") else "torch")
    from_env = ops.get_backend("cpu")
    assert from_env == backend.requested_backend()
    ops.set_backend("torch")
    assert ops.get_backend("cuda") == "torch"
    with ops.use_backend("auto"):
        assert ops.get_backend("cpu") == "torch"
        with ops.use_backend("torch"):
            assert backend.requested_backend() == "torch"
        assert backend.requested_backend() == "auto"
    assert backend.requested_backend() == "torch"


def test_context_restores_on_error():
    with pytest.raises(RuntimeError):
        with ops.use_backend("torch"):
            raise RuntimeError("boom")
    assert backend.requested_backend() == "auto"


def test_unknown_names_and_missing_backends_are_clear_errors(monkeypatch):
    with pytest.raises(ValueError, match="unknown scatter backend 'cuda'"):
        ops.set_backend("cuda")
    monkeypatch.setenv(backend.ENV_VAR, "fast")
    with pytest.raises(ValueError, match=backend.ENV_VAR):
        ops.get_backend("cpu")
    monkeypatch.delenv(backend.ENV_VAR)
    _pretend_missing(monkeypatch, "torch_scatter")
    with pytest.raises(ImportError, match="'torch_scatter' is not usable here: No module named"):
        ops.set_backend("torch_scatter")
    with pytest.raises(ImportError, match="torch_scatter"):
        with ops.use_backend("torch_scatter"):
            pass
    assert backend.requested_backend() == "auto"


def test_first_use_is_logged_once_per_device_and_backend(caplog):
    src, index = torch.ones(4, 2), torch.tensor([0, 1, 1, 0])
    with caplog.at_level(logging.INFO, logger="mfwrap.ops"):
        ops.scatter_sum(src, index, 2)
        ops.scatter_sum(src, index, 2)
    lines = [r.getMessage() for r in caplog.records if r.name == "mfwrap.ops"]
    assert len(lines) == 1 and "cpu tensors: torch (automatic choice" in lines[0]
