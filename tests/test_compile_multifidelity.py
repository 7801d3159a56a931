"""``mfwrap.compile_model(MultiFidelity(CHGNet))``: one graph for all sizes and fidelity mixes, no
graph break (``fullgraph=True``), outputs and loss gradients equal eager. Traced with the "eager"
and "aot_eager" backends (what CI affords; inductor's numerics are compared in
benchmarks/train_step.py)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

import mfwrap
from mf_models import batch_of, perturb, random_crystal, small_backbone
from mfwrap import MultiFidelity
from mfwrap.compile import CompiledMultiFidelity
from mfwrap.data import keys as K
from mfwrap.data.graph import to_graph
from mfwrap.physics import energy_and_derivatives
from mfwrap.train.loss import MultiTargetLoss

# (atoms per structure, fidelity per structure): single and mixed fidelities, several sizes
BATCHES = [((3,), [1]), ((2, 5), [0, 1]), ((4, 2, 3, 5), [1, 1, 1, 1]), ((5,), [0]), ((3, 4, 2, 2), [1, 0, 0, 1])]


pytestmark = pytest.mark.usefixtures("fresh_dynamo")  # tests/conftest.py


def _wrapped(dtype=torch.float64, readout="copies") -> MultiFidelity:
    model = MultiFidelity(small_backbone("chgnet").to(dtype), ["low", "high"], "ECMR", readout=readout)
    perturb(model, "ECMR")
    return model


def _batch(model, sizes, fidelities, dtype=torch.float64, labels=False):
    rng = np.random.default_rng(sum(sizes) * 7 + len(sizes))
    batch = batch_of([random_crystal(rng, n) for n in sizes], model.graph_spec, fidelities, dtype=dtype)
    if labels:  # synthetic labels, all present
        n, b = batch.num_nodes, batch.num_graphs
        generator = torch.Generator().manual_seed(n)
        for key, shape in ((K.ENERGY, (b,)), (K.FORCES, (n, 3)), (K.STRESS, (b, 3, 3)), (K.MAGMOMS, (n,))):
            batch[key] = torch.randn(shape, generator=generator, dtype=dtype)
            batch[K.mask_key(key)] = torch.ones(shape[0], dtype=torch.bool)
        batch[K.ENERGY] = batch[K.ENERGY] - 5.0 * torch.bincount(batch.batch).to(dtype)
    return batch


def _assert_close(got, want, atol):
    assert set(got) == set(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=atol)


def test_inference_equals_eager_with_one_graph_per_batch_kind():
    model = _wrapped()
    compiled = mfwrap.compile_model(model, backend="eager")  # fullgraph=True: a graph break raises
    assert isinstance(compiled, CompiledMultiFidelity) and compiled.fidelity_names == ("low", "high")
    for sizes, fidelities in BATCHES:
        batch = _batch(model, sizes, fidelities)
        _assert_close(energy_and_derivatives(compiled, batch), energy_and_derivatives(model, batch), 1e-10)
    assert counters["stats"]["unique_graphs"] <= 2  # one structure, several structures
    assert not counters["graph_break"]


def test_predict_at_each_fidelity_equals_eager():
    model = _wrapped(torch.float32)
    compiled = mfwrap.compile_model(model, backend="eager")
    structures = [random_crystal(np.random.default_rng(s), 4) for s in range(3)]
    for fidelity in ("low", "high"):
        for got, want in zip(
            mfwrap.predict(compiled, structures, fidelity), mfwrap.predict(model, structures, fidelity)
        ):
            assert got["energy"] == pytest.approx(want["energy"], abs=1e-4)
            np.testing.assert_allclose(got["forces"], want["forces"], atol=1e-4)
            np.testing.assert_allclose(got["magmoms"], want["magmoms"], atol=1e-5)


@pytest.mark.parametrize("readout", ["copies", "residual"])
def test_training_loss_gradients_equal_eager(readout):
    """Huber loss on E, F, S, M; parameter gradients through forces and stress, fidelity parameters included."""
    model = _wrapped(readout=readout)
    compiled = mfwrap.compile_model(model, backend="aot_eager")
    loss = MultiTargetLoss("efsm")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    for sizes, fidelities in BATCHES[1:3] + BATCHES[4:]:
        batch = _batch(model, sizes, fidelities, labels=True)
        results = []
        for net in (model, compiled):
            value, _ = loss(energy_and_derivatives(net, batch, create_graph=True), batch)
            results.append((value, torch.autograd.grad(value, [p for _, p in named], allow_unused=True)))
        (want, want_grads), (got, got_grads) = results
        torch.testing.assert_close(got, want, rtol=1e-10, atol=0)
        for (name, param), g, w in zip(named, got_grads, want_grads):
            # a fidelity's readout that sees no row: no gradient eagerly, a zero one compiled (dense)
            g, w = (torch.zeros_like(param) if x is None else x for x in (g, w))
            torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-11, msg=name)
        fidelity_grads = [
            g
            for (name, _), g in zip(named, got_grads)
            if "fidelity" in name or "copies.1." in name or "residuals.1." in name
        ]
        assert fidelity_grads and all(g is not None and g.abs().max() > 0 for g in fidelity_grads)
    assert counters["stats"]["unique_graphs"] <= 1  # batches of several structures: one training graph
    assert not counters["graph_break"]


def test_a_bad_fidelity_index_is_an_error():
    model = _wrapped()
    compiled = mfwrap.compile_model(model, backend="eager")
    batch = _batch(model, (2, 3), [0, 2])
    with pytest.raises(RuntimeError):
        compiled(batch)


@pytest.mark.parametrize("name", ["schnet", "dimenet"])
def test_backbones_without_a_compiled_path_say_so(name):
    with pytest.raises(TypeError, match="has no compiled path"):
        mfwrap.compile_model(MultiFidelity(small_backbone(name), ["low", "high"], "ECMR"))


def test_the_trainer_takes_compiled_steps(tmp_path):
    from mfwrap.train import TrainConfig, Trainer

    rng, spec = np.random.default_rng(11), small_backbone("chgnet").graph_spec
    graphs = []
    for i in range(8):
        atoms = random_crystal(rng, 3)
        n = len(atoms)
        labels = {
            K.ENERGY: -5.0 * n + rng.normal(),
            K.FORCES: rng.normal(size=(n, 3)),
            K.STRESS: rng.normal(size=(3, 3)),
            K.MAGMOMS: rng.uniform(0, 2, n),
        }
        graphs.append(to_graph(atoms, spec, fidelity=i % 2, labels=labels, dtype=torch.float64))
    steps = {}
    for mode in (False, "aot_eager"):
        torch.manual_seed(0)
        model = _wrapped()
        config = TrainConfig(
            epochs=1, batch_size=2, val_fraction=0.0, output_dir=str(tmp_path / str(mode)), progress=False, compile=mode
        )
        trainer = Trainer(model, config)
        trainer.setup_optimiser(10)
        trainer.train_step(graphs, torch.tensor([0, 1]))  # one structure of each fidelity
        steps[mode] = {n: p.detach().clone() for n, p in model.named_parameters()}
        assert (trainer.compile_seconds is None) == (mode is False)
    for name, value in steps[False].items():
        torch.testing.assert_close(steps["aot_eager"][name], value, rtol=1e-9, atol=1e-12, msg=name)
    assert trainer.compile_seconds > 0 and trainer.step_model is not trainer.train_model


def test_a_delta_model_compiles_as_the_sum_of_its_parts():
    from mfwrap.delta import DeltaModel

    model = DeltaModel(small_backbone("chgnet", seed=1).double(), small_backbone("chgnet", seed=2).double())
    compiled = mfwrap.compile_model(model, backend="eager")
    for sizes in [(3,), (2, 4)]:
        batch = _batch(model, sizes, [0] * len(sizes))
        _assert_close(energy_and_derivatives(compiled, batch), energy_and_derivatives(model, batch), 1e-10)


def test_a_failing_compilation_names_torch_and_the_way_out(tmp_path):
    """torch.compile failing inside torch (as on torch 2.11) is reported with the torch version and
    ``train.compile: false``, the original error chained."""
    from mfwrap.train import TrainConfig, Trainer

    rng, spec = np.random.default_rng(3), small_backbone("chgnet").graph_spec
    graphs = [
        to_graph(random_crystal(rng, 3), spec, fidelity=1, labels={K.ENERGY: -15.0}, dtype=torch.float64)
        for _ in range(2)
    ]
    config = TrainConfig(
        epochs=1,
        batch_size=2,
        val_fraction=0.0,
        targets="e",
        output_dir=str(tmp_path),
        progress=False,
        compile="aot_eager",
    )
    trainer = Trainer(_wrapped(), config)
    trainer.setup_optimiser(10)

    def fails(batch):
        raise torch._dynamo.exc.TorchRuntimeError("isIntList() INTERNAL ASSERT FAILED")

    trainer.step_model = fails
    with pytest.raises(RuntimeError, match=rf"torch {re.escape(torch.__version__)}.*train\.compile: false") as raised:
        trainer.train_step(graphs, torch.tensor([0, 1]))
    assert isinstance(raised.value.__cause__, torch._dynamo.exc.TorchRuntimeError)
    assert trainer.compile_seconds is None
