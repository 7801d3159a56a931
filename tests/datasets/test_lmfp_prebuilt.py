"""The packaged small LMFP set: installed into an empty cache without labelling, checked, kept in
step with ``SIZES["small"]``."""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mfwrap.data import keys as K
from mfwrap.datasets import lmfp, teachers

PACKAGED = lmfp.prebuilt_dir("small", 0)


def _no_build(*args, **kwargs):
    raise AssertionError("the small set was built instead of taken from the package")


@pytest.fixture
def no_build(monkeypatch):
    monkeypatch.setattr(lmfp, "build_lmfp", _no_build)
    monkeypatch.setattr(teachers, "load_teacher", _no_build)


def test_packaged_copy_is_the_current_small_recipe():
    """Fails when SIZES["small"] (or the format) changes: rebuild the packaged copy with
    ``python -m mfwrap.datasets.lmfp --size small --out DIR`` and gzip its .xyz files into prebuilt/."""
    manifest = json.loads((PACKAGED / "manifest.json").read_text())
    assert manifest["recipe"] == json.loads(json.dumps(dataclasses.asdict(lmfp.SIZES["small"])))
    assert (manifest["size"], manifest["seed"], manifest["format_version"]) == ("small", 0, lmfp.FORMAT_VERSION)
    assert sorted(manifest["files"]) == sorted(f"{split}.xyz" for split in lmfp.SPLITS)
    assert sorted(p.name for p in PACKAGED.iterdir()) == sorted(
        [
            *(f"{s}.xyz.gz" for s in lmfp.SPLITS),
            "manifest.json",
            "low_train_by_high_teacher.xyz.gz",  # mfwrap.datasets.lmfp_gap
            "low_train_by_high_teacher.xyz.json",
        ]
    )


def test_packaged_copy_was_labelled_by_the_installed_teachers():
    manifest = json.loads((PACKAGED / "manifest.json").read_text())
    assert manifest["teacher_checkpoints_sha256"] == lmfp._provenance()["teacher_checkpoints_sha256"]


def test_empty_cache_gets_the_packaged_copy(tmp_path, no_build, caplog):
    with caplog.at_level(logging.INFO, logger=lmfp.LOG.name):
        splits = lmfp.load_lmfp("small", seed=0, cache_dir=tmp_path)
    assert [len(splits[name]) for name in lmfp.SPLITS] == [100, 50, 300]
    assert all(K.MAGMOMS not in r.labels for r in splits["low_train"])
    assert all(r.labels[K.MAGMOMS].shape == (len(r.atoms),) for r in splits["high_train"] + splits["high_test"])
    assert [r.message for r in caplog.records if "packaged copy" in r.message] != []
    directory = lmfp.dataset_dir("small", 0, tmp_path)
    assert sorted(p.name for p in directory.parent.iterdir()) == [directory.name]  # no staging left behind
    packaged = json.loads((PACKAGED / "manifest.json").read_text())
    assert json.loads((directory / "manifest.json").read_text()) == packaged


def test_loading_the_packaged_copy_never_imports_chgnet(tmp_path):
    script = (
        "import json, sys; from mfwrap.datasets.lmfp import load_lmfp; "
        f"s = load_lmfp('small', 0, {str(tmp_path)!r}); "
        "print(json.dumps([len(s['high_train']), sorted(m for m in sys.modules if m.startswith('chgnet'))]))"
    )
    root = Path(lmfp.__file__).parents[2]
    out = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, check=True).stdout
    assert json.loads(out.splitlines()[-1]) == [100, []]


def test_another_recipe_builds_instead(tmp_path, monkeypatch):
    monkeypatch.setitem(lmfp.SIZES, "small", dataclasses.replace(lmfp.SIZES["small"], max_strain=0.02))
    built = []
    monkeypatch.setattr(lmfp, "build_lmfp", lambda *args, **kwargs: built.append(args) or _no_build())
    with pytest.raises(AssertionError, match="built instead"):
        lmfp.load_lmfp("small", seed=0, cache_dir=tmp_path)
    assert len(built) == 1 and not lmfp.dataset_dir("small", 0, tmp_path).exists()


def test_other_seeds_are_not_packaged(tmp_path):
    assert not lmfp.install_prebuilt("small", 1, lmfp.dataset_dir("small", 1, tmp_path))
    assert not lmfp.install_prebuilt("tiny", 0, lmfp.dataset_dir("tiny", 0, tmp_path))


def test_damaged_packaged_file_is_reported_and_not_installed(tmp_path, monkeypatch, no_build):
    damaged = shutil.copytree(PACKAGED.parent, tmp_path / "prebuilt")
    gz = damaged / PACKAGED.name / "high_test.xyz.gz"
    gz.write_bytes(gzip.compress(gzip.decompress(gz.read_bytes()).replace(b"Fe", b"Mn", 1)))
    monkeypatch.setattr(lmfp, "PREBUILT", damaged)
    with pytest.raises(ValueError, match=r"high_test\.xyz\.gz does not match its manifest"):
        lmfp.load_lmfp("small", seed=0, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache" / "lmfp").iterdir()) == []  # nothing half-installed


def test_damaged_cached_file_is_reported(tmp_path, no_build):
    directory = lmfp.dataset_dir("small", 0, tmp_path)
    assert lmfp.install_prebuilt("small", 0, directory)
    with open(directory / "low_train.xyz", "r+b") as handle:
        handle.seek(1000)
        handle.write(b"9")
    with pytest.raises(ValueError, match=r"low_train\.xyz does not match its manifest"):
        lmfp.load_lmfp("small", seed=0, cache_dir=tmp_path)
