"""Pseudo-label replay (mfwrap.replay): labels are the frozen model's predictions, structures are
deterministic under the seed, the cache is reused only for the same model/config/structures, and bad
input (unknown elements, a missing file, a bad config) is one clear error."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms

import mfwrap
from backbones.chgnet import CHGNet
from mf_models import random_crystal, small_backbone
from mfwrap.datasets.prototypes import DEFAULT_ELEMENTS, min_bond_ratio, part_of
from mfwrap.replay import ReplayConfig, build_replay, known_elements, pseudo_label, replay_structures


@pytest.fixture(scope="module")
def model():
    return small_backbone("chgnet")


@pytest.fixture(scope="module")
def own():
    rng = np.random.default_rng(7)
    return [random_crystal(rng) for _ in range(3)]


def same_labels(records, predictions) -> bool:
    return all(
        set(r.labels) == set(p) and all(np.array_equal(r.labels[k], p[k]) for k in p)
        for r, p in zip(records, predictions, strict=True)
    )


def same_structures(a, b) -> bool:
    return all(
        np.array_equal(x.numbers, y.numbers)
        and np.array_equal(x.positions, y.positions)
        and np.array_equal(x.cell.array, y.cell.array)
        for x, y in zip(a, b, strict=True)
    )


def test_pseudo_labels_are_the_models_predictions_and_reproducible(model, own):
    records = pseudo_label(model, own, name="pbe")
    assert same_labels(records, mfwrap.predict(model, own, batch_size=8))
    assert same_labels(pseudo_label(model, own, name="pbe"), mfwrap.predict(model, own))
    assert {r.fidelity for r in records} == {"pbe"} and records[0].atoms.info["pseudo_label"] == "pbe"
    assert set(records[0].labels) == {"energy", "forces", "stress", "magmoms"}
    assert set(pseudo_label(model, own, targets=["energy", "forces"])[0].labels) == {"energy", "forces"}


def test_pseudo_labels_of_one_fidelity_of_a_multi_fidelity_model(model, own):
    wrapped = mfwrap.MultiFidelity(model, ["pbe", "r2scan"], check_symmetry=False)
    with torch.no_grad():
        for parameter in wrapped.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    records = pseudo_label(wrapped, own, fidelity="r2scan", name="r2scan")
    assert same_labels(records, mfwrap.predict(wrapped, own, fidelity="r2scan"))
    assert not same_labels(records, mfwrap.predict(wrapped, own, fidelity="pbe"))
    with pytest.raises(ValueError, match="pbe"):
        pseudo_label(wrapped, own)  # which fidelity labels must be said


def test_structures_are_deterministic_under_the_seed(model, own, tmp_path):
    path = tmp_path / "pool.xyz"
    ase.io.write(path, [random_crystal(np.random.default_rng(i)) for i in range(5)])
    config = ReplayConfig(sources=["own", "prototypes", str(path)], n=9, seed=0)
    first, again = replay_structures(model, config, own), replay_structures(model, config, own)
    other = replay_structures(model, ReplayConfig(sources=config.sources, n=9, seed=1), own)
    assert {source: len(s) for source, s in first.items()} == {"own": 3, "prototypes": 3, str(path): 3}
    for source in first:
        assert same_structures(first[source], again[source])
        assert not same_structures(first[source], other[source])
    alone = replay_structures(model, ReplayConfig(sources=["prototypes", "own"], n=6, seed=0), own)
    assert same_structures(alone["prototypes"], first["prototypes"])  # a source does not depend on the others
    assert all(part_of(a.info["prototype"]) == "replay" for a in first["prototypes"])
    assert len({a.info["index"] for a in first[str(path)]}) == 3  # drawn without replacement


def test_own_structures_are_perturbed_copies_doubled_along_the_shortest_vector(model, own):
    config = ReplayConfig(sources=["own"], n=6, rattle=0.05, strain=0.02)
    for atoms in replay_structures(model, config, own)["own"]:
        original = own[atoms.info["index"]]
        axis = np.argmin(original.cell.lengths())
        assert len(atoms) == 2 * len(original)
        ratio = atoms.cell.lengths() / original.cell.lengths()
        assert 1.9 < ratio[axis] < 2.1 and np.all(np.delete(ratio, axis) < 1.05)
        doubled = original.repeat([2 if i == axis else 1 for i in range(3)])
        assert 0 < np.abs(atoms.get_scaled_positions(wrap=False) - doubled.get_scaled_positions(wrap=False)).max()


def test_a_file_source_gives_at_most_its_frames(model, tmp_path):
    path = tmp_path / "pool.xyz"
    ase.io.write(path, [random_crystal(np.random.default_rng(i)) for i in range(2)])
    made = replay_structures(model, ReplayConfig(sources=[str(path)], n=5))
    assert sorted(a.info["index"] for a in made[str(path)]) == [0, 1]


def test_cache_reused_only_for_the_same_model_config_and_structures(model, own, tmp_path):
    lines = []
    config = ReplayConfig(sources=["own", "prototypes"], n=4, cache_dir=str(tmp_path))
    built = build_replay(model, config, own, origin="pbe", log=lines.append)
    again = build_replay(model, config, own, origin="pbe", log=lines.append)
    assert "cache miss" in lines[0] and "2 own + 2 prototypes = 4 structures" in lines[0]
    assert "cache hit" in lines[1]
    assert same_structures([r.atoms for r in built], [r.atoms for r in again])
    assert same_labels(again, [r.labels for r in built]) and [r.fidelity for r in again] == ["pbe"] * 4
    assert again[0].atoms.info == built[0].atoms.info
    (entry,) = (tmp_path / "replay").iterdir()
    provenance = json.loads((entry / "provenance.json").read_text())
    assert provenance["counts"] == {"own": 2, "prototypes": 2} and provenance["peak_rss_mib"] > 0

    changed = small_backbone("chgnet")
    with torch.no_grad():
        changed.composition.element_energies[0] += 1e-6
    for args in (
        (changed, config, own),
        (model, ReplayConfig(sources=config.sources, n=4, seed=1, cache_dir=str(tmp_path)), own),
        (model, config, [own[0], own[1], own[2][::-1]]),
    ):
        build_replay(*args, origin="pbe", log=lines.append)
        assert "cache miss" in lines[-1]
    build_replay(model, config, own, origin="r2scan", log=lines.append)
    assert "cache miss" in lines[-1]
    energy_only = build_replay(model, config, own, origin="pbe", targets=["energy"], log=lines.append)
    assert "cache miss" in lines[-1] and set(energy_only[0].labels) == {"energy"}
    assert len(list((tmp_path / "replay").iterdir())) == 6


@pytest.mark.filterwarnings("ignore:.*no neighbour")  # the random tiny model's pressures expand some cells
def test_elements_the_model_does_not_know_are_an_error_naming_them(own, tmp_path):
    model = small_backbone("chgnet")
    with torch.no_grad():
        model.composition.element_energies[26 - 1] = 0.0  # Fe unknown (AtomRef entry k is Z = k + 1)
    assert 26 not in known_elements(model) and 3 in known_elements(model)
    with_iron = [a for a in own if 26 in a.numbers]
    assert with_iron
    with pytest.raises(ValueError, match=r"source 'own': element\(s\) Fe unknown"):
        replay_structures(model, ReplayConfig(sources=["own"], n=3), own)
    path = tmp_path / "pool.xyz"
    ase.io.write(path, with_iron)
    with pytest.raises(ValueError, match=rf"source '{path}': element\(s\) Fe"):
        replay_structures(model, ReplayConfig(sources=[str(path)], n=3))
    prototypes = replay_structures(model, ReplayConfig(sources=["prototypes"], n=20), own)["prototypes"]
    assert all(26 not in a.numbers for a in prototypes)  # restricted to known elements, never an error


def test_missing_file_and_bad_config_are_one_line_errors(model, tmp_path):
    missing = str(tmp_path / "missing.xyz")
    with pytest.raises(ValueError, match=r"'.*missing.xyz' is neither one of \['own', 'prototypes'\]"):
        ReplayConfig(sources=[missing])
    path = tmp_path / "gone.xyz"
    ase.io.write(path, [Atoms("Cu", cell=[2.5] * 3, pbc=True)])
    config = ReplayConfig(sources=[str(path)], n=2)
    path.unlink()
    with pytest.raises(ValueError, match="gone.xyz'.*no such file"):
        replay_structures(model, config)
    with pytest.raises(ValueError, match="source 'own' needs"):
        replay_structures(model, ReplayConfig(sources=["own"], n=2))
    for bad, match in (
        (dict(n=0), "n must be a positive integer"),
        (dict(rattle=-0.1), "rattle must be >= 0"),
        (dict(strain=1.5), r"strain must be in \[0, 1\)"),
        (dict(sources=["own", "own"]), "twice"),
        (dict(sources=[]), "non-empty"),
    ):
        with pytest.raises(ValueError, match=match):
            ReplayConfig(**bad)


def test_replay_from_the_pretrained_chgnet():
    pretrained = CHGNet.from_pretrained("0.3.0")
    known = known_elements(pretrained)
    assert set(DEFAULT_ELEMENTS) <= known and max(known) == 94
    assert known_elements(mfwrap.MultiFidelity(pretrained, ["pbe", "r2scan"], check_symmetry=False)) == known
    structures = replay_structures(pretrained, ReplayConfig(sources=["prototypes"], n=3, rattle=0.2))["prototypes"]
    assert all(min_bond_ratio(a) >= 0.8 - 1e-9 for a in structures)
    records = pseudo_label(pretrained, structures, name="mptrj_pbe")
    assert same_labels(records, mfwrap.predict(pretrained, structures))
    assert all(np.isfinite(r.labels["energy"]) for r in records)


def test_own_structures_after_a_few_steps_of_the_models_own_dynamics(model, own, tmp_path):
    """md_steps: Langevin with the labelling model moves each perturbed structure (the same atoms and cell),
    deterministically under the seed; the cache tells the dynamics apart, and sets made without it keep
    the key they had before the option existed."""
    from mfwrap.replay.cache import cache_key

    still = replay_structures(model, ReplayConfig(sources=["own"], n=3), own)["own"]
    moved_config = ReplayConfig(sources=["own"], n=3, md_steps=3, md_temperature=900.0)
    moved = replay_structures(model, moved_config, own)["own"]
    again = replay_structures(model, moved_config, own)["own"]
    assert same_structures(moved, again)
    for a, b in zip(still, moved):
        assert np.array_equal(a.numbers, b.numbers) and np.array_equal(a.cell.array, b.cell.array)
        shift = np.linalg.norm(a.positions - b.positions, axis=1)
        assert 1e-4 < shift.max() < 1.0  # moved by three femtosecond steps, not blown apart
        assert not b.get_velocities().any() and b.calc is None
    plain = ReplayConfig(sources=["own"], n=3)
    assert cache_key(model, plain, own, "pbe", None) != cache_key(model, moved_config, own, "pbe", None)
    legacy = {k: v for k, v in vars(plain).items() if not k.startswith("md_")}
    assert cache_key(model, plain, own, "pbe", None) == _key_without_md(model, legacy, own)
    with pytest.raises(ValueError, match="md_steps must be a non-negative integer"):
        ReplayConfig(sources=["own"], md_steps=-1)
    with pytest.raises(ValueError, match="md_temperature .* must be > 0"):
        ReplayConfig(sources=["own"], md_steps=2, md_temperature=0.0)


def _key_without_md(model, settings, own):
    """The cache key as it was computed before the md options existed (their fields absent)."""
    import hashlib

    from mfwrap import __version__
    from mfwrap.replay.cache import CACHE_VERSION, model_sha256

    settings = {k: v for k, v in settings.items() if k != "cache_dir"}
    head = dict(version=CACHE_VERSION, mfwrap=__version__, config=settings, origin="pbe", fidelity=None, targets=None)
    digest = hashlib.sha256(json.dumps({**head, "files": {}}, sort_keys=True).encode())
    digest.update(model_sha256(model).encode())
    for atoms in own:
        for array in (atoms.numbers.astype(np.int64), atoms.positions, atoms.cell.array, atoms.pbc):
            digest.update(np.ascontiguousarray(array, dtype=np.float64).tobytes())
    return digest.hexdigest()
