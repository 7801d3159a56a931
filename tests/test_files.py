"""Files from elsewhere cannot run code; writes are atomic. Covers mfwrap.files and mfwrap.model_file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import mfwrap
from mf_models import small_backbone
from mfwrap import MultiFidelity
from mfwrap.cli import main as cli_main
from mfwrap.files import UnsafeFileError, write_atomic, write_text
from mfwrap.model_file import ENV_MODULES, architecture_class, build_model, import_class, read_payload, save_model

ROOT = Path(__file__).resolve().parents[1]
# a module whose import writes a marker file, defining a model class
MARKER_MODULE = (
    "import pathlib, torch\npathlib.Path({marker!r}).write_text('ran')\nclass Model(torch.nn.Module):\n    pass\n"
)


class _CreatesFileWhenUnpickled:
    """Unpickling this calls open(marker, "w"): how a crafted checkpoint runs code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _crafted_model_file(tmp_path):
    mf = MultiFidelity(small_backbone("schnet"), ["a", "b"], "ECMR")
    path = tmp_path / "crafted.pt"
    mf.save(path)
    payload = torch.load(path, weights_only=True)
    marker = tmp_path / "code-ran"
    payload["history"] = [_CreatesFileWhenUnpickled(str(marker))]
    torch.save(payload, path)
    return path, marker


def test_the_crafted_file_would_run_code_under_an_unsafe_load(tmp_path):
    path, marker = _crafted_model_file(tmp_path)
    torch.load(path, weights_only=False)  # what a plain torch.load did: the payload runs
    assert marker.exists()


def test_crafted_files_are_refused_and_run_nothing(tmp_path):
    path, marker = _crafted_model_file(tmp_path)
    with pytest.raises(UnsafeFileError, match="crafted.pt: refused"):
        mfwrap.load(path)
    with pytest.raises(UnsafeFileError):
        read_payload(path)
    with pytest.raises(SystemExit):  # the command line prints the refusal and exits with status 2
        cli_main(["predict", str(path), str(path)])
    assert not marker.exists()


@pytest.mark.parametrize("target", ["subprocess:run", "os:system", "builtins:open", "torch:zeros"])
def test_an_architecture_names_only_model_classes(tmp_path, target):
    marker = tmp_path / "code-ran"
    with pytest.raises(UnsafeFileError, match=f"refused to import '{target.split(':')[0]}'"):
        build_model({"class": target, "config": {"args": ["touch", str(marker)]}})
    with pytest.raises(ValueError, match="not a torch.nn.Module class"):
        import_class(target)  # a class path the user wrote (a config) may import, but names model classes only
    assert not marker.exists()


def _file_naming(tmp_path, class_path: str) -> Path:
    path = tmp_path / "crafted.pt"
    save_model(nn.Linear(1, 1), path, architecture={"class": class_path, "config": {}})
    return path


def test_a_file_naming_this_imports_nothing(tmp_path, capsys):
    """The trial: a file naming "this:X" printed the Zen of Python under `mfwrap evaluate`."""
    path = _file_naming(tmp_path, "this:X")
    with pytest.raises(UnsafeFileError) as refused:
        mfwrap.load(path)
    message = str(refused.value)
    assert "crafted.pt" in message and "'this:X'" in message and "register_architecture_module('this')" in message
    assert "\n" not in message
    with pytest.raises(SystemExit):
        cli_main(["evaluate", str(path), str(tmp_path / "frames.xyz")])
    out, err = capsys.readouterr()
    assert "Beautiful is better" not in out + err and "refused to import 'this'" in err
    assert "this" not in sys.modules


def test_a_file_naming_a_module_of_the_working_directory_runs_nothing(tmp_path):
    """The trial: a file naming "helpers:Model" ran helpers.py from the working directory."""
    marker = tmp_path / "helpers-ran"
    (tmp_path / "helpers.py").write_text(MARKER_MODULE.format(marker=str(marker)))
    path = _file_naming(tmp_path, "helpers:Model")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(ENV_MODULES, None)
    done = subprocess.run(
        [sys.executable, "-m", "mfwrap.cli", "evaluate", str(path), "frames.xyz"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2, done.stderr
    assert "refused to import 'helpers'" in done.stderr and "MFWRAP_ARCHITECTURE_MODULES=helpers" in done.stderr
    assert not marker.exists()


@pytest.mark.parametrize("module", ["mfwrap_evil", "backbones_evil", "mfwrapx.models"])
def test_the_allow_list_matches_whole_module_names(tmp_path, monkeypatch, module):
    marker = tmp_path / "ran"
    (tmp_path / f"{module.split('.')[0]}.py").write_text(MARKER_MODULE.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UnsafeFileError, match="refused to import"):
        build_model({"class": f"{module}:Model", "config": {}})
    assert not marker.exists() and module not in sys.modules


@pytest.mark.parametrize(
    "path", [".model_file:Model", "mfwrap..x:Model", "mfwrap:", "mfwrap.model_file:nn.Linear", "mfwrap.__main__:X"]
)
def test_relative_malformed_and_borrowed_class_paths_are_refused(path):
    with pytest.raises(ValueError, match="class path|not a torch.nn.Module class"):
        architecture_class(path)


@pytest.mark.parametrize("shadow", ["backbones/__init__.py", "backbones.py"])
def test_a_backbones_package_shadowing_the_installed_one_is_refused(tmp_path, monkeypatch, shadow):
    marker = tmp_path / "ran"
    (tmp_path / shadow).parent.mkdir(exist_ok=True)
    (tmp_path / shadow).write_text(MARKER_MODULE.format(marker=str(marker)))
    monkeypatch.delitem(sys.modules, "backbones")
    monkeypatch.syspath_prepend(str(tmp_path))  # as the working directory is under `python -m`
    with pytest.raises(UnsafeFileError, match="not from the installed package beside mfwrap"):
        build_model({"class": "backbones:Model", "config": {}})
    assert not marker.exists()


def test_a_registered_module_loads(tmp_path, monkeypatch):
    (tmp_path / "trusted_models.py").write_text(MARKER_MODULE.format(marker=str(tmp_path / "ran")))
    (tmp_path / "trusted_other.py").write_text(MARKER_MODULE.format(marker=str(tmp_path / "other-ran")))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UnsafeFileError):
        build_model({"class": "trusted_models:Model", "config": {}})
    mfwrap.register_architecture_module("trusted_models")
    assert type(build_model({"class": "trusted_models:Model", "config": {}})).__name__ == "Model"
    monkeypatch.setenv(ENV_MODULES, "trusted_other")
    assert type(build_model({"class": "trusted_other:Model", "config": {}})).__name__ == "Model"
    with pytest.raises(ValueError, match="absolute dotted module name"):
        mfwrap.register_architecture_module(".relative")


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    write_text(path, "previous")

    def fails_halfway(stream):
        stream.write(b"half of the new cont")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, fails_halfway)
    assert path.read_text() == "previous" and os.listdir(tmp_path) == ["metrics.json"]
    write_text(path, "new")
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["metrics.json"]
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # like open(), not mkstemp's 0600
