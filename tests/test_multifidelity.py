"""MultiFidelity: identity at initialisation, each mechanism alone, mixed batches, add_fidelity, errors."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mfwrap
from mf_models import batch_of, evaluate, perturb, random_crystal, small_backbone
from mfwrap import MultiFidelity
from mfwrap.data import keys as K
from mfwrap.fidelity import resolve_fidelity

BACKBONES = ("schnet", "dimenet", "chgnet")
NAMES = ["low", "mid", "high"]


@functools.lru_cache(maxsize=None)
def wrapped(name: str, mechanisms: str = "ECMR") -> tuple:
    backbone = small_backbone(name)
    return backbone, MultiFidelity(backbone, NAMES, mechanisms)


def _close(a: dict, b: dict, keys=(K.ENERGY, K.FORCES, K.STRESS, K.MAGMOMS)) -> None:
    for key in keys:
        if key in a or key in b:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-5, err_msg=key)


@pytest.mark.parametrize("name", BACKBONES)
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**31), count=st.integers(1, 3))
def test_identity_at_initialisation(name, seed, count):
    backbone, mf = wrapped(name)
    rng = np.random.default_rng(seed)
    structures = [random_crystal(rng) for _ in range(count)]
    fidelities = rng.integers(0, len(NAMES), count).tolist()
    batch = batch_of(structures, backbone.graph_spec, fidelities)
    _close(evaluate(mf, batch), evaluate(backbone, batch))


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("mechanism", ["E", "C", "M", "R", ""])
def test_each_mechanism_alone_makes_fidelities_differ(name, mechanism):
    backbone = small_backbone(name)
    mf = MultiFidelity(backbone, NAMES, mechanism)
    perturb(mf, mechanism)
    structure = random_crystal(np.random.default_rng(3))
    low, high = (evaluate(mf, batch_of([structure], backbone.graph_spec, [f])) for f in (0, 2))
    if mechanism == "":
        _close(low, high)
        assert not any(p.requires_grad for m in mf.fidelity_modules() for p in m.parameters(recurse=False))
        return
    assert abs(low[K.ENERGY] - high[K.ENERGY]).max() > 1e-3
    forces_differ = np.abs(low[K.FORCES] - high[K.FORCES]).max() > 1e-6
    assert forces_differ == (mechanism != "C")  # the composition energy does not depend on positions


@pytest.mark.parametrize("name", BACKBONES)
def test_mixed_batch_equals_structures_one_by_one(name):
    backbone = small_backbone(name)
    mf = MultiFidelity(backbone, NAMES, "ECMR")
    perturb(mf, "ECMR")
    rng = np.random.default_rng(7)
    structures = [random_crystal(rng) for _ in range(3)]
    fidelities = [2, 0, 1]
    together = evaluate(mf, batch_of(structures, backbone.graph_spec, fidelities))
    alone = [evaluate(mf, batch_of([s], backbone.graph_spec, [f])) for s, f in zip(structures, fidelities)]
    for key in (K.ENERGY, K.STRESS):
        np.testing.assert_allclose(together[key], np.concatenate([a[key] for a in alone]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(together[K.FORCES], np.concatenate([a[K.FORCES] for a in alone]), rtol=1e-4, atol=1e-5)


def test_force_loss_reaches_fidelity_parameters_by_double_backward():
    from mfwrap.physics import energy_and_derivatives

    backbone = small_backbone("chgnet")
    mf = MultiFidelity(backbone, NAMES, "ECMR")
    perturb(mf, "EMR")
    batch = batch_of([random_crystal(np.random.default_rng(0), max_atoms=8)], backbone.graph_spec, [1])
    energy_and_derivatives(mf, batch, create_graph=True)[K.FORCES].square().sum().backward()
    layers = [m for m in mf.fidelity_modules() if hasattr(m, "fidelity_weight") and m.fidelity_weight.grad is not None]
    assert {m.row_kind for m in layers} == {"edge", "angle"}
    for m in layers:
        assert float(m.fidelity_weight.grad[:, 1].abs().sum()) > 0
        assert float(m.fidelity_weight.grad[:, [0, 2]].abs().sum()) == 0  # fidelities not in the batch
    embedding = next(m for m in mf.fidelity_modules() if hasattr(m, "fidelity_vectors"))
    assert float(embedding.fidelity_vectors.grad[1].abs().sum()) > 0


def test_add_fidelity_copies_an_existing_one():
    backbone = small_backbone("schnet")
    mf = MultiFidelity(backbone, ["a", "b"], "ECMR")
    perturb(mf, "ECMR")
    mf.add_fidelity("c", like="b")
    assert mf.fidelity_names == ("a", "b", "c") and resolve_fidelity(mf, "c") == 2
    structure = random_crystal(np.random.default_rng(1))
    b, c = (evaluate(mf, batch_of([structure], backbone.graph_spec, [f])) for f in (1, 2))
    _close(b, c)
    with pytest.raises(ValueError, match="duplicate"):
        mf.add_fidelity("a")


def test_pretrained_chgnet_keeps_its_predictions_at_every_fidelity():
    from backbones.chgnet import CHGNet
    from mfwrap.datasets.structures import lifepo4

    backbone = CHGNet.from_pretrained("0.3.0")
    mf = MultiFidelity(backbone, ["pbe", "r2scan"], "ECMR")
    structure = lifepo4((1, 1, 1))
    reference = mfwrap.predict(backbone, structure)[0]
    for fidelity in mf.fidelity_names:
        prediction = mfwrap.predict(mf, structure, fidelity=fidelity)[0]
        for key, value in reference.items():
            np.testing.assert_allclose(prediction[key], value, rtol=1e-5, atol=1e-5, err_msg=key)


def test_bad_input_is_a_clear_error():
    backbone, mf = wrapped("schnet")
    with pytest.raises(ValueError, match=r"unknown fidelity 'dft' \(known: \['low', 'mid', 'high'\]\)"):
        mfwrap.predict(mf, random_crystal(np.random.default_rng(0)), fidelity="dft")
    with pytest.raises(ValueError, match=r"3 fidelities \['low', 'mid', 'high'\]: choose one with fidelity="):
        mfwrap.predict(mf, random_crystal(np.random.default_rng(0)))
    with pytest.raises(ValueError, match="unknown letters"):
        MultiFidelity(backbone, NAMES, "ECX")
    with pytest.raises(ValueError, match="duplicate fidelity"):
        MultiFidelity(backbone, ["a", "a"], "E")
    batch = batch_of([random_crystal(np.random.default_rng(0))], backbone.graph_spec, [5])
    with pytest.raises(ValueError, match="out of range"):
        mf(batch)
    del batch[K.FIDELITY]
    with pytest.raises(KeyError, match="fidelity"):
        mf(batch)
    with pytest.raises(ValueError, match="mechanism E has no place"):
        MultiFidelity(backbone, NAMES, "E", spec={"message": ["interactions.*"], "readout": ["readout"]})
    with pytest.raises(RuntimeError, match="outside MultiFidelity.forward"):
        mf.backbone(batch)


def test_single_fidelity_model_needs_no_name():
    backbone = small_backbone("schnet")
    mf = MultiFidelity(backbone, ["only"], "EMR")
    structure = random_crystal(np.random.default_rng(2))
    np.testing.assert_allclose(
        mfwrap.predict(mf, structure)[0][K.ENERGY], mfwrap.predict(backbone, structure)[0][K.ENERGY], rtol=1e-6
    )


@pytest.mark.parametrize("name", BACKBONES)
def test_drawn_fidelity_parameters_follow_a_from_scratch_start(name):
    import torch

    from mfwrap.mechanisms import FidelityEmbedding, FidelityLinear, FidelityReadout

    backbone = small_backbone(name)
    mf = MultiFidelity(backbone, NAMES, "ECMR")
    torch.manual_seed(0)
    mf.draw_fidelity_parameters()
    flat = lambda params: torch.cat([p.detach().flatten() for p in params])  # noqa: E731
    (embedding,) = [m for m in mf.fidelity_modules() if isinstance(m, FidelityEmbedding)]
    assert 0.6 < float(embedding.fidelity_vectors.detach().std() / flat(embedding.embedding.parameters()).std()) < 1.4
    layers = [m for m in mf.fidelity_modules() if isinstance(m, FidelityLinear)]
    for layer in layers:  # one nn.Linear over [a, onehot(f)]: U(-1/sqrt(n), 1/sqrt(n)), n its input width
        width = sum(p.shape[-1] for p in layer.linear.parameters() if p.dim() == 2) + len(NAMES)
        assert width**-0.5 / 2 < float(layer.fidelity_weight.detach().abs().max()) <= width**-0.5
    for readout in (m for m in mf.fidelity_modules() if isinstance(m, FidelityReadout)):
        first, *others = [flat(c.parameters()) for c in readout.copies]
        assert others and all(not torch.equal(first, other) for other in others)
    structure = random_crystal(np.random.default_rng(5))
    low, high = (evaluate(mf, batch_of([structure], backbone.graph_spec, [f])) for f in (0, 2))
    assert abs(low[K.ENERGY] - high[K.ENERGY]).max() > 1e-3 and np.abs(low[K.FORCES] - high[K.FORCES]).max() > 1e-6
