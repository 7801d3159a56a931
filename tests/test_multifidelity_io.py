"""MultiFidelity save / load (atomic, clear errors) and the per-fidelity composition fit."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch_geometric.data import Data

import mfwrap
from backbones.pyg import SchNet
from mf_models import batch_of, evaluate, perturb, random_crystal, small_backbone
from mfwrap import MultiFidelity
from mfwrap.data import keys as K
from mfwrap.mechanisms.composition import FidelityComposition
from mfwrap.mechanisms.composition_fit import fit_linear_composition


@pytest.mark.parametrize("name, readout", [("schnet", "copies"), ("chgnet", "copies"), ("chgnet", "residual")])
def test_save_load_round_trip(tmp_path, name, readout):
    backbone = small_backbone(name)
    mf = MultiFidelity(backbone, ["low", "high"], "ECMR", readout=readout)
    perturb(mf, "ECMR")
    path = tmp_path / "model.pt"
    mf.save(path)
    loaded = mfwrap.load(path)
    assert loaded.fidelity_names == ("low", "high") and loaded.mechanisms == "ECMR" and loaded.readout == readout
    assert loaded.surgery.places == mf.surgery.places and loaded.spec == mf.spec
    batch = batch_of([random_crystal(np.random.default_rng(4)) for _ in range(2)], backbone.graph_spec, [1, 0])
    for key, value in evaluate(mf, batch).items():
        np.testing.assert_allclose(evaluate(loaded, batch)[key], value, rtol=1e-6, atol=1e-6)
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]  # no temporary file left behind


def test_schnet_with_mean_std_and_atomref_under_c_round_trips(tmp_path):
    atomref = torch.linspace(-3.0, -1.0, 100).tolist()
    torch.manual_seed(0)
    backbone = SchNet(
        hidden_channels=16,
        num_filters=16,
        num_interactions=2,
        num_gaussians=12,
        cutoff=4.0,
        mean=-0.7,
        std=2.5,
        atomref=atomref,
    )
    mf = MultiFidelity(backbone, ["low", "high"], "ECMR")
    table = next(m for m in mf.fidelity_modules() if isinstance(m, FidelityComposition))
    np.testing.assert_allclose(
        table.element_energies[1, [3, 8]].numpy(), [atomref[3], atomref[8]], rtol=1e-6
    )  # C starts at atomref
    perturb(mf, "ECMR")
    mf.save(tmp_path / "schnet.pt")
    loaded = mfwrap.load(tmp_path / "schnet.pt")
    assert loaded.backbone.mean == -0.7 and loaded.backbone.std == 2.5
    batch = batch_of([random_crystal(np.random.default_rng(6)) for _ in range(3)], backbone.graph_spec, [1, 0, 1])
    for key, value in evaluate(mf, batch).items():
        np.testing.assert_array_equal(evaluate(loaded, batch)[key], value)
    # mean and std act: the same weights with other values predict other energies
    other = MultiFidelity(
        SchNet(
            hidden_channels=16,
            num_filters=16,
            num_interactions=2,
            num_gaussians=12,
            cutoff=4.0,
            mean=0.0,
            std=1.0,
            atomref=atomref,
        ),
        ["low", "high"],
        "ECMR",
    )
    other.load_state_dict(mf.state_dict())
    assert not np.allclose(evaluate(other, batch)[K.ENERGY], evaluate(mf, batch)[K.ENERGY])


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
    truncated.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ValueError, match="truncated.pt: not a readable torch file"):
        mfwrap.load(truncated)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="not an mfwrap model file"):
        mfwrap.load(other)
    payload = torch.load(path, weights_only=True)
    payload["architecture"]["config"]["fidelities"] = ["a", "b", "c"]  # weights are for two fidelities
    torch.save(payload, other)
    with pytest.raises(ValueError, match="weights do not match"):
        mfwrap.load(other)
    payload["version"] = 99
    torch.save(payload, other)
    with pytest.raises(ValueError, match="file version 99"):
        mfwrap.load(other)
    payload["version"] = 2
    payload["architecture"]["config"]["backbone"]["class"] = "backbones.nowhere:Model"
    torch.save(payload, other)
    with pytest.raises(ValueError, match="cannot rebuild"):
        mfwrap.load(other)


def test_version_1_files_still_load(tmp_path):
    """A file written by MultiFidelity.save before the one model-file format reads as it was."""
    mf = MultiFidelity(small_backbone("chgnet"), ["low", "high"], "ECMR")
    perturb(mf, "ECMR")
    legacy = {
        "format": "mfwrap.MultiFidelity",
        "version": 1,
        "backbone_class": "backbones.chgnet.model:CHGNet",
        "backbone_config": dict(mf.backbone.config),
        "spec": mf.spec.as_dict(),
        "fidelities": ["low", "high"],
        "mechanisms": "ECMR",
        "row_kinds": {path: kind for _, path, _, kind in mf.surgery.places},
        "state_dict": mf.state_dict(),
    }
    torch.save(legacy, tmp_path / "v1.pt")
    loaded = mfwrap.load(tmp_path / "v1.pt")
    batch = batch_of([random_crystal(np.random.default_rng(5)) for _ in range(2)], mf.graph_spec, [1, 0])
    for key, value in evaluate(mf, batch).items():
        np.testing.assert_array_equal(evaluate(loaded, batch)[key], value)


def _graph(numbers, energy, fidelity):
    return Data(
        atomic_numbers=torch.tensor(numbers),
        energy=torch.tensor([energy]),
        energy_mask=torch.tensor([True]),
        fidelity=torch.tensor([fidelity]),
    )


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


@pytest.mark.parametrize("name", ["schnet", "chgnet", "dimenet"])  # C replacing atomref / AtomRef
def test_fit_composition_per_fidelity_with_pooled_fallback(name):
    mf = MultiFidelity(small_backbone(name), ["a", "b"], "C")
    graphs = _energy_graphs()
    mf.fit_composition(graphs)
    table = next(m for m in mf.fidelity_modules() if isinstance(m, FidelityComposition)).element_energies
    np.testing.assert_allclose(table[0, [3, 8, 26]].numpy(), [-2.0, -5.0, -8.0], atol=1e-3)
    np.testing.assert_allclose(table[1, [3, 8]].numpy(), [-2.5, -4.0], atol=1e-3)
    # Fe is absent at fidelity b: it takes the pooled (all-fidelity) least-squares value, not zero
    # and not fidelity a's own value.
    pooled = fit_linear_composition(graphs, prior=torch.zeros(95, dtype=torch.float64))
    assert float(table[1, 26]) == pytest.approx(float(pooled[26]), abs=1e-4)
    assert abs(float(pooled[26]) - float(table[0, 26])) > 1e-2


def test_fit_composition_without_c_fits_the_shared_backbone_composition():
    mf = MultiFidelity(small_backbone("chgnet"), ["a", "b"], "EMR")
    graphs = [g for g in _energy_graphs() if int(g[K.FIDELITY]) == 0]
    mf.fit_composition(graphs)
    energies = mf.backbone.composition.element_energies
    np.testing.assert_allclose(energies[[2, 7, 25]].numpy(), [-2.0, -5.0, -8.0], atol=1e-3)  # index Z - 1
