"""The LMFP two-fidelity dataset: built from the chgnet teachers (tiny variant), then cached."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from mfwrap.data import keys as K
from mfwrap.data.graph import GraphSpec
from mfwrap.data.readers import to_graphs
from mfwrap.datasets import lmfp, teachers
from mfwrap.datasets.lmfp_frames import random_configuration
from mfwrap.datasets.structures import lifepo4

RECIPE = lmfp.SIZES["tiny"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def splits(cache):
    return lmfp.load_lmfp("tiny", seed=7, cache_dir=cache, workers=1)


def _records(splits):
    return [r for name in lmfp.SPLITS for r in splits[name]]


def test_sizes_and_fidelity_names(splits):
    assert len(splits["high_train"]) == RECIPE.n_high - RECIPE.n_high_test
    assert len(splits["high_test"]) == RECIPE.n_high_test
    assert len(splits["low_train"]) == RECIPE.n_low
    for name, records in splits.items():
        assert {r.fidelity for r in records} == {r.atoms.info["fidelity"] for r in records} == {name.split("_")[0]}
    assert {r.atoms.info["kind"] for r in _records(splits)} == {"static", "md"}


def test_magmoms_only_at_high_fidelity(splits):
    for record in splits["high_train"] + splits["high_test"]:
        magmoms = record.labels[K.MAGMOMS]
        assert magmoms.shape == (len(record.atoms),)
        iron_or_manganese = np.isin(record.atoms.numbers, (25, 26))
        assert magmoms[iron_or_manganese].min() > 3.0  # high-spin Fe2+/3+, Mn2+/3+
        assert np.abs(magmoms[~iron_or_manganese]).max() < 0.5
    for record in splits["low_train"]:
        assert set(record.labels) == {K.ENERGY, K.FORCES, K.STRESS}


def test_label_masks_of_the_graphs(splits):
    graphs = to_graphs(splits["low_train"] + splits["high_test"], GraphSpec(cutoff=5.0), ["low", "high"])
    for graph in graphs:
        high = int(graph[K.FIDELITY]) == 1
        assert bool(graph[K.mask_key(K.MAGMOMS)].all()) is high and bool(graph[K.mask_key(K.MAGMOMS)].any()) is high
        for target in (K.ENERGY, K.FORCES, K.STRESS):
            assert bool(graph[K.mask_key(target)].all())
    assert sorted(int(g[K.FIDELITY]) for g in graphs) == [0] * RECIPE.n_low + [1] * RECIPE.n_high_test


def test_interrupted_build_resumes_and_is_deterministic(splits, cache, tmp_path, monkeypatch):
    built, labelled = lmfp.build_shard, []

    def interrupted_at_low(fidelity, *args):
        if fidelity == "low":
            raise KeyboardInterrupt
        return built(fidelity, *args)

    def counting(fidelity, *args):
        labelled.append(fidelity)
        return built(fidelity, *args)

    out = tmp_path / "again"
    monkeypatch.setattr(lmfp, "build_shard", interrupted_at_low)
    with pytest.raises(KeyboardInterrupt):
        lmfp.build_lmfp("tiny", seed=7, out_dir=out)
    assert not out.exists()
    monkeypatch.setattr(lmfp, "build_shard", counting)
    lmfp.build_lmfp("tiny", seed=7, out_dir=out)
    assert labelled == ["low"]  # the finished high-fidelity shard was kept
    assert not (tmp_path / ".again.partial").exists()
    files = lambda directory: json.loads((directory / "manifest.json").read_text())["files"]  # noqa: E731
    assert files(out) == files(lmfp.dataset_dir("tiny", 7, cache))  # same seed, same bytes


def test_seed_changes_the_structures():
    first = random_configuration(np.random.default_rng([1, 1]), RECIPE, 0.05)
    second = random_configuration(np.random.default_rng([2, 1]), RECIPE, 0.05)
    assert len(first) != len(second) or not np.allclose(first.positions, second.positions)


def test_composition_ranges_cover_x_and_y_from_0_to_1():
    rng = np.random.default_rng(0)
    configurations = [random_configuration(rng, RECIPE, 0.0) for _ in range(300)]
    x = np.array([a.info["li_fraction"] for a in configurations])
    y = np.array([a.info["mn_fraction"] for a in configurations])
    assert x.min() == 0.0 and x.max() == 1.0 and y.min() == 0.0 and y.max() == 1.0
    assert len(np.unique(x)) == 9 and len(np.unique(y)) == 9


def test_composition_matches_the_atoms(splits):
    for atoms in (r.atoms for r in _records(splits)):
        counts = np.bincount(atoms.numbers, minlength=27)
        assert counts[15] == 8 and counts[8] == 32 and counts[25] + counts[26] == 8
        assert atoms.info["li_fraction"] == counts[3] / 8
        assert atoms.info["mn_fraction"] == counts[25] / 8


def test_strain_is_symmetric_and_within_3_percent(splits):
    reference = lifepo4((1, 1, 2)).lattice.matrix
    for atoms in (r.atoms for r in _records(splits)):
        strain = np.linalg.solve(reference, atoms.cell.array) - np.eye(3)  # L = L0 (I + ε)
        np.testing.assert_allclose(strain, strain.T, atol=1e-9)
        assert np.abs(strain).max() <= RECIPE.max_strain
        np.testing.assert_allclose(strain.reshape(9), atoms.info["strain"], atol=1e-9)


def test_forces_and_stresses_are_far_from_zero(splits):
    for record in _records(splits):
        assert np.sqrt((record.labels[K.FORCES] ** 2).mean()) > 0.1  # eV/Å
        assert np.abs(record.labels[K.STRESS]).max() > 0.1  # GPa
    temperatures = [r.atoms.info["temperature_K"] for r in _records(splits) if r.atoms.info["kind"] == "md"]
    assert min(temperatures) >= RECIPE.temperature_k[0] and max(temperatures) <= RECIPE.temperature_k[1]


def test_high_and_low_use_different_structures(splits):
    high = [r.atoms for r in splits["high_train"] + splits["high_test"]]
    for low in (r.atoms for r in splits["low_train"]):
        for atoms in high:
            assert len(low) != len(atoms) or not np.allclose(low.positions, atoms.positions, atol=0.05)


def test_test_split_holds_whole_groups(splits):
    train_groups = {r.atoms.info["group"] for r in splits["high_train"]}
    assert train_groups.isdisjoint(r.atoms.info["group"] for r in splits["high_test"])


def test_labels_are_the_teachers_predictions(splits):
    import torch
    from chgnet.model import CHGNet  # the teacher (a test dependency)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # faster for one 56-atom cell, above all on a shared machine
    try:
        _compare_with_teachers(splits, CHGNet)
    finally:
        torch.set_num_threads(threads)


def _compare_with_teachers(splits, CHGNet):
    for name, model_name in (("high_test", "r2scan"), ("low_train", "0.3.0")):
        record = splits[name][0]
        atoms = record.atoms
        model = CHGNet.load(model_name=model_name, use_device="cpu", verbose=False)
        structure = Structure(Lattice(atoms.cell.array), atoms.numbers, atoms.positions, coords_are_cartesian=True)
        prediction = model.predict_structure(structure, task="efs")
        assert -12.0 < record.labels[K.ENERGY] / len(atoms) < -5.0  # total energy: chgnet's e is per atom
        assert record.labels[K.ENERGY] == pytest.approx(float(prediction["e"]) * len(atoms), abs=1e-3)
        np.testing.assert_allclose(record.labels[K.FORCES], prediction["f"], atol=1e-4)
        np.testing.assert_allclose(record.labels[K.STRESS], prediction["s"], atol=1e-3)  # GPa, chgnet's sign


def test_cache_is_reused_without_relabelling(splits, cache, monkeypatch):
    def no_teacher(*args, **kwargs):
        raise AssertionError("the cached dataset was relabelled")

    monkeypatch.setattr(teachers, "load_teacher", no_teacher)
    cached = lmfp.load_lmfp("tiny", seed=7, cache_dir=cache)
    assert [len(cached[name]) for name in lmfp.SPLITS] == [len(splits[name]) for name in lmfp.SPLITS]
    assert (lmfp.dataset_dir("tiny", 7, cache) / "manifest.json").exists()


def test_cache_of_another_recipe_is_refused(splits, cache, monkeypatch):
    monkeypatch.setitem(lmfp.SIZES, "tiny", dataclasses.replace(RECIPE, max_strain=0.02))
    with pytest.raises(ValueError, match="different recipe"):
        lmfp.load_lmfp("tiny", seed=7, cache_dir=cache)


def test_corrupt_cache_is_reported(splits, cache, tmp_path):
    import shutil

    copy = shutil.copytree(lmfp.dataset_dir("tiny", 7, cache), tmp_path / "copy")
    with open(copy / "low_train.xyz", "a") as handle:
        handle.write("\n")
    with pytest.raises(ValueError, match="does not match its manifest"):
        lmfp.read_lmfp(copy)


def test_command_line_reports_a_built_dataset(splits, cache, capsys):
    directory = lmfp.dataset_dir("tiny", 7, cache)
    lmfp.main(["--size", "tiny", "--seed", "7", "--out", str(directory)])
    out = capsys.readouterr().out
    assert str(directory) in out
    assert f"high_train.xyz: {RECIPE.n_high - RECIPE.n_high_test}" in out and f"low_train.xyz: {RECIPE.n_low}" in out
