"""torch.compile of the native CHGNet (backbones/chgnet/compiled.py): equal outputs, one graph
for every structure size, no graph break, and force/stress training gradients equal to eager.

Compiling is slow on a small CPU, so the models are tiny and most tests use the "aot_eager"
backend: the same Dynamo capture (graph breaks, guards, recompilation) and AOTAutograd graphs
(the joint graph whose single backward training relies on) as inductor, without code
generation. One test runs inductor end to end.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters
from torch_geometric.data import Batch

import mfwrap
from backbones.chgnet import CHGNet
from backbones.chgnet.compiled import CompiledCHGNet
from mfwrap.data import keys as K
from mfwrap.data.graph import to_graph
from mfwrap.physics import energy_and_derivatives
from mfwrap.train.loss import MultiTargetLoss

TINY = dict(
    atom_fea_dim=16,
    bond_fea_dim=16,
    angle_fea_dim=16,
    num_radial=7,
    num_angular=7,
    n_conv=3,
    atom_conv_hidden_dim=16,
    bond_conv_hidden_dim=16,
    mlp_hidden_dims=(16,),
)
# Three sizes (n, E, U, S, A all differ), then two batches (B = 2, 3).
SIZES = ["Si_primitive", "SrTiO3_cubic", "NaCl_triclinic"]
BATCHES = [["Si_primitive", "Fe_bcc_2x2x2"], ["SrTiO3_cubic", "ZnO_wurtzite_2x2x1", "NaCl_triclinic"]]


pytestmark = pytest.mark.usefixtures("fresh_dynamo")  # tests/conftest.py


def _tiny(dtype=torch.float32, **changes) -> CHGNet:
    torch.manual_seed(0)
    return CHGNet(**(TINY | changes)).to(dtype)


def _batch(model, structures, dtype=torch.float32, labels=False) -> Batch:
    graphs = []
    for seed, s in enumerate(structures):
        n = len(s)
        rng = torch.Generator().manual_seed(seed)
        target = {
            K.ENERGY: -4.0 * n,
            K.FORCES: 0.3 * torch.randn(n, 3, generator=rng).numpy(),
            K.STRESS: torch.randn(3, 3, generator=rng).numpy(),
            K.MAGMOMS: torch.rand(n, generator=rng).numpy(),
        }
        graphs.append(to_graph(s, model.graph_spec, dtype=dtype, labels=target if labels else None))
    return Batch.from_data_list(graphs)


def _assert_equal_predictions(got, want, batch, energy=1e-5, forces=1e-4, stress=1e-3, magmoms=1e-5):
    """Tolerances in eV/atom, eV/Å, GPa, μB."""
    atoms = torch.bincount(batch.batch).to(want[K.ENERGY].dtype)
    torch.testing.assert_close(got[K.ENERGY] / atoms, want[K.ENERGY] / atoms, rtol=0, atol=energy)
    torch.testing.assert_close(got[K.FORCES], want[K.FORCES], rtol=0, atol=forces)
    torch.testing.assert_close(got[K.STRESS], want[K.STRESS], rtol=0, atol=stress)
    torch.testing.assert_close(got[K.MAGMOMS], want[K.MAGMOMS], rtol=0, atol=magmoms)


def _compiled_graphs() -> int:
    return counters["stats"]["unique_graphs"]


def test_inductor_efsm_equals_eager_with_one_graph_for_all_sizes(test_structures):
    """n_conv=2 to shorten inductor's compile. Batches of exactly 3 structures are left out: inductor's
    identity-op removal adds a guard B != 3 there, so B = 3 compiles once more (documented)."""
    model = _tiny(n_conv=2)
    compiled = mfwrap.compile_model(model)  # inductor, fullgraph=True: a graph break would raise
    assert isinstance(compiled, CompiledCHGNet) and compiled.graph_spec == model.graph_spec
    with torch.no_grad():
        for names in [[name] for name in SIZES] + BATCHES[:1]:
            batch = _batch(model, [test_structures[name] for name in names])
            _assert_equal_predictions(
                energy_and_derivatives(compiled, batch), energy_and_derivatives(model, batch), batch
            )
    assert _compiled_graphs() == 1
    assert not counters["graph_break"]


def test_compiled_forward_gives_forces_through_autograd(test_structures):
    """The backbone contract (forward(batch)) compiled; forces and stress by the eager autograd path."""
    model = _tiny(torch.float64)
    compiled = CompiledCHGNet(model, backend="aot_eager")
    for name in SIZES:
        batch = _batch(model, [test_structures[name]], torch.float64)
        got = energy_and_derivatives(compiled.forward, batch)  # a bare callable: no energy_and_gradients
        _assert_equal_predictions(got, energy_and_derivatives(model, batch), batch, 1e-12, 1e-12, 1e-10, 1e-12)
    assert _compiled_graphs() == 1


def test_training_gradients_equal_eager(test_structures):
    """Huber loss on E, F, S, M; parameter gradients through forces and stress (second derivatives)."""
    model = _tiny(torch.float64)
    compiled = mfwrap.compile_model(model, backend="aot_eager")
    loss = MultiTargetLoss("efsm")
    params = [p for p in model.parameters() if p.requires_grad]
    for names in BATCHES:
        batch = _batch(model, [test_structures[name] for name in names], torch.float64, labels=True)
        results = []
        for net in (model, compiled):
            value, _ = loss(energy_and_derivatives(net, batch, create_graph=True), batch)
            results.append((value, torch.autograd.grad(value, params, allow_unused=True)))
        (want, want_grads), (got, got_grads) = results
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
        used = [(g, w) for g, w in zip(got_grads, want_grads) if w is not None]
        assert len(used) > len(params) // 2 and [g is None for g in got_grads] == [w is None for w in want_grads]
        for g, w in used:
            torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)
    assert _compiled_graphs() == 1  # the training graph serves both batch sizes


def test_pretrained_efsm_equals_eager(test_structures):
    model = CHGNet.from_pretrained("0.3.0")
    compiled = mfwrap.compile_model(model, backend="aot_eager")
    batch = _batch(model, [test_structures["LiFePO4_1x1x2"]])
    got = energy_and_derivatives(compiled, batch)  # create_graph=False: no parameter graph is kept
    assert not any(t.requires_grad for t in got.values())
    _assert_equal_predictions(got, energy_and_derivatives(model, batch), batch)
    assert not counters["graph_break"]


def test_models_without_compiled_are_rejected():
    with pytest.raises(TypeError, match="compiled"):
        mfwrap.compile_model(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="CHGNet"):
        CompiledCHGNet(torch.nn.Linear(2, 2))
