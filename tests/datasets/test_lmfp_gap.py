"""The LMFP gap dial: low-fidelity labels y_high + α (y_low − y_high) on the shipped frames."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mfwrap.data import keys as K
from mfwrap.datasets import lmfp, lmfp_gap
from mfwrap.datasets.teachers import load_teacher, torch_threads


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return cache, lmfp.load_lmfp("small", 0, cache)["low_train"], lmfp_gap.high_teacher_labels("small", 0, cache)


def test_the_packaged_labels_are_the_high_teacher_on_the_low_fidelity_frames(shipped):
    _, low, by_high = shipped
    assert len(by_high) == len(low) == 300
    assert all(
        np.array_equal(a.atoms.numbers, b.atoms.numbers) and np.allclose(a.atoms.positions, b.atoms.positions)
        for a, b in zip(low, by_high)
    )
    picked = [0, 137, 299]
    from mfwrap.datasets.lmfp_frames import TEACHERS

    with torch_threads(1):
        predictions = load_teacher(TEACHERS["high"])([low[i].atoms for i in picked], "efs")
    for i, p in zip(picked, predictions):
        assert by_high[i].labels[K.ENERGY] == pytest.approx(p["e"] * len(low[i].atoms), abs=1e-4)
        # float32 teacher: another CPU's summation order moves large components by ~1e-5 relative
        np.testing.assert_allclose(by_high[i].labels[K.FORCES], p["f"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(by_high[i].labels[K.STRESS], 0.5 * (p["s"] + np.transpose(p["s"])), atol=1e-4)
    # a real gap: the high teacher is not the low fidelity
    assert np.mean([np.abs(a.labels[K.FORCES] - b.labels[K.FORCES]).mean() for a, b in zip(low, by_high)]) > 0.1


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_the_dial_moves_every_label_linearly_and_keeps_the_rest(shipped, alpha):
    _, low, by_high = shipped
    moved = lmfp_gap.with_gap(low, by_high, alpha)
    for m, lo, hi in zip(moved, low, by_high):
        assert m.fidelity == "low" and m.atoms is lo.atoms and K.MAGMOMS not in m.labels
        for target in (K.ENERGY, K.FORCES, K.STRESS):
            np.testing.assert_allclose(
                m.labels[target], hi.labels[target] + alpha * (lo.labels[target] - hi.labels[target])
            )
    if alpha == 1.0:
        assert all(np.array_equal(m.labels[K.FORCES], lo.labels[K.FORCES]) for m, lo in zip(moved, low))
    assert all(lo.labels is not m.labels for m, lo in zip(moved, low))  # the shipped records untouched


def test_gap_dataset_names_and_bad_input():
    assert lmfp_gap.gap_of("lmfp-gap50") == 0.5 and lmfp_gap.gap_of("lmfp-gap0") == 0.0
    for bad in ("lmfp", "lmfp-gapx", "lmfp-gap-5"):
        with pytest.raises(ValueError, match="gap-dial dataset name"):
            lmfp_gap.gap_of(bad)
    with pytest.raises(ValueError, match="must be in"):
        lmfp_gap.with_gap([], [], 1.5)


def test_labels_that_do_not_match_the_frames_are_refused(shipped, tmp_path):
    cache = shipped[0]
    lmfp.load_lmfp("small", 0, tmp_path)
    directory = lmfp.dataset_dir("small", 0, tmp_path)
    source = lmfp.dataset_dir("small", 0, cache) / lmfp_gap.RELABELLED
    lines = source.read_text().splitlines(keepends=True)
    first = int(lines[0])  # drop the first frame: 300 labels become 299
    (directory / lmfp_gap.RELABELLED).write_text("".join(lines[first + 2 :]))
    (directory / (lmfp_gap.RELABELLED + ".json")).write_text(
        json.dumps({"low_train_sha256": lmfp._sha256(directory / "low_train.xyz")})
    )
    with pytest.raises(ValueError, match="do not match the low-fidelity frames"):
        lmfp_gap.high_teacher_labels("small", 0, tmp_path)


def test_a_changed_low_fidelity_file_is_relabelled_not_trusted(shipped, tmp_path, monkeypatch):
    lmfp.load_lmfp("small", 0, tmp_path)
    directory = lmfp.dataset_dir("small", 0, tmp_path)
    (directory / (lmfp_gap.RELABELLED + ".json")).write_text(json.dumps({"low_train_sha256": "0" * 64}))
    (directory / lmfp_gap.RELABELLED).write_text("stale")
    labelled = []
    monkeypatch.setattr(lmfp_gap, "label_low_with_high_teacher", lambda frames, path: labelled.append(path))
    # the stale stamp is not the low file's: the packaged copy (whose stamp matches) is installed instead
    assert len(lmfp_gap.high_teacher_labels("small", 0, tmp_path)) == 300 and labelled == []
