"""MultiFidelity save / load (atomic, clear errors) and the per-fidelity composition fit."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch_geometric.data import Data

import mfwrap
from mf_models import batch_of, evaluate, perturb, random_crystal, small_backbone
from mfwrap import MultiFidelity
from mfwrap.composition import FidelityComposition
from mfwrap.data import keys as K


@pytest.mark.parametrize("name", ["schnet", "chgnet"])
def test_save_load_round_trip(tmp_path, name):
    backbone = small_backbone(name)
    mf = MultiFidelity(backbone, ["low", "high"], "ECMR")
    perturb(mf, "ECMR")
    path = tmp_path / "model.pt"
    mf.save(path)
    loaded = mfwrap.load(path)
    assert loaded.fidelity_names == ("low", "high") and loaded.mechanisms == "ECMR"
    assert loaded.surgery.places == mf.surgery.places and loaded.spec == mf.spec
    batch = batch_of([random_crystal(np.random.default_rng(4)) for _ in range(2)], backbone.graph_spec, [1, 0])
    for key, value in evaluate(mf, batch).items():
        np.testing.assert_allclose(evaluate(loaded, batch)[key], value, rtol=1e-6, atol=1e-6)
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]  # no temporary file left behind


def test_save_never_half_overwrites(tmp_path, monkeypatch):
    mf = MultiFidelity(small_backbone("schnet"), ["a", "b"], "EM")
    path = tmp_path / "model.pt"
    mf.save(path)
    before = path.read_bytes()

    def failing_save(obj, stream):
        stream.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        mf.save(path)
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["model.pt"]


def test_corrupt_and_mismatched_files_are_clear_errors(tmp_path):
    mf = MultiFidelity(small_backbone("schnet"), ["a", "b"], "ECMR")
    path = tmp_path / "model.pt"
    mf.save(path)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: 2000])
    with pytest.raises(ValueError, match="not a readable mfwrap model file"):
        mfwrap.load(truncated)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="not an mfwrap MultiFidelity file"):
        mfwrap.load(other)
    payload = torch.load(path, weights_only=True)
    payload["fidelities"] = ["a", "b", "c"]  # weights are for two fidelities
    torch.save(payload, other)
    with pytest.raises(ValueError, match="weights do not match"):
        mfwrap.load(other)
    payload["version"] = 99
    torch.save(payload, other)
    with pytest.raises(ValueError, match="format version 99"):
        mfwrap.load(other)
    payload["version"], payload["backbone_class"] = 1, "backbones.nowhere:Model"
    torch.save(payload, other)
    with pytest.raises(ValueError, match="cannot rebuild backbone"):
        mfwrap.load(other)


def _graph(numbers, energy, fidelity):
    return Data(atomic_numbers=torch.tensor(numbers), energy=torch.tensor([energy]), energy_mask=torch.tensor([True]),
                fidelity=torch.tensor([fidelity]))


def _energy_graphs():
    """Fidelity 0 sees Li, O, Fe; fidelity 1 only Li and O, with shifted references."""
    rng = np.random.default_rng(0)
    truth = [{3: -2.0, 8: -5.0, 26: -8.0}, {3: -2.5, 8: -4.0}]
    graphs = []
    for fidelity, weights in enumerate(truth):
        for _ in range(10):
            numbers = rng.choice(list(weights), size=int(rng.integers(2, 7))).tolist()
            graphs.append(_graph(numbers, sum(weights[z] for z in numbers), fidelity))
    return graphs


@pytest.mark.parametrize("name", ["schnet", "chgnet"])  # C added to the energy / C replacing AtomRef
def test_fit_composition_per_fidelity_with_pooled_fallback(name):
    mf = MultiFidelity(small_backbone(name), ["a", "b"], "C")
    mf.fit_composition(_energy_graphs())
    table = next(m for m in mf.fidelity_modules() if isinstance(m, FidelityComposition)).element_energies
    np.testing.assert_allclose(table[0, [3, 8, 26]].numpy(), [-2.0, -5.0, -8.0], atol=1e-3)
    np.testing.assert_allclose(table[1, [3, 8]].numpy(), [-2.5, -4.0], atol=1e-3)
    # Fe is absent at fidelity b: it takes the pooled (all-fidelity) value, not zero.
    assert float(table[1, 26]) == pytest.approx(float(table[0, 26]), abs=1.5) and float(table[1, 26]) < -5


def test_fit_composition_without_c_fits_the_shared_backbone_composition():
    mf = MultiFidelity(small_backbone("chgnet"), ["a", "b"], "EMR")
    graphs = [g for g in _energy_graphs() if int(g[K.FIDELITY]) == 0]
    mf.fit_composition(graphs)
    energies = mf.backbone.composition.element_energies
    np.testing.assert_allclose(energies[[2, 7, 25]].numpy(), [-2.0, -5.0, -8.0], atol=1e-3)  # index Z - 1
    with pytest.raises(ValueError, match="nothing to fit"):
        MultiFidelity(small_backbone("schnet"), ["a", "b"], "EMR").fit_composition(graphs)
