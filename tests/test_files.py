"""Files from elsewhere cannot run code; writes are atomic. Covers mfwrap.files and mfwrap.model_file."""

from __future__ import annotations

import os

import pytest
import torch

import mfwrap
from mf_models import small_backbone
from mfwrap import MultiFidelity
from mfwrap.cli import main as cli_main
from mfwrap.files import UnsafeFileError, write_atomic, write_text
from mfwrap.model_file import build_model, import_class, read_payload


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
    with pytest.raises(ValueError, match="not a torch.nn.Module class"):
        build_model({"class": target, "config": {"args": ["touch", str(marker)]}})
    with pytest.raises(ValueError, match="not a torch.nn.Module class"):
        import_class(target)
    assert not marker.exists()


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
