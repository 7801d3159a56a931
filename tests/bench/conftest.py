"""One quick learning-curve bench, run once through the command line, for the tests that need finished runs."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from mfwrap.cli import main

COMMITTED = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "suite" / "medium"


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="session")
def snapshot():
    """{relative path: SHA-256} of every file under a folder."""
    return _snapshot


@pytest.fixture(scope="session")
def quick_bench(tmp_path_factory):
    """The trial of issue 26: ``mfwrap bench learning_curve --level quick`` with an --out that holds the committed
    medium reports (as a checkout's default does). Its root, out, dataset cache and the medium reports' snapshot
    before it ran; tests copy what they change (:func:`quick_copy`)."""
    base = tmp_path_factory.mktemp("quick_bench")
    root, out, cache = base / "runs", base / "results", base / "cache"
    shutil.copytree(COMMITTED, out / "medium")
    before = _snapshot(out / "medium")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MFWRAP_CACHE", str(cache))
        assert main(["bench", "learning_curve", "--level", "quick", "--root", str(root), "--out", str(out)]) == 0
    return SimpleNamespace(root=root, out=out, cache=cache, medium_before=before)


@pytest.fixture
def quick_copy(quick_bench, tmp_path, monkeypatch):
    """A copy of the quick bench's runs (``runs/quick/...``) and report (``results/quick/...``) to change."""
    monkeypatch.setenv("MFWRAP_CACHE", str(quick_bench.cache))
    root, out = tmp_path / "runs", tmp_path / "results"
    shutil.copytree(quick_bench.root, root)
    shutil.copytree(quick_bench.out / "quick", out / "quick")
    return SimpleNamespace(root=root, out=out)
