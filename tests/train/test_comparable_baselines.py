"""Every method fits its composition model the same way, for every shipped backbone (issue 9).

Before, the trainer looked for an attribute named ``composition``: PyG SchNet keeps its element
energies in ``atomref``, so single-fidelity and transfer SchNet trained with no composition
model while multi-fidelity SchNet had one (test energy MAE 6.7 eV/atom against 0.2 at a near-zero
learning rate).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: mf_models
from tiny_backbone import TinyBackbone, labelled_graphs  # noqa: E402

from mf_models import small_backbone  # noqa: E402
from mfwrap import MultiFidelity  # noqa: E402
from mfwrap.delta import DeltaModel  # noqa: E402
from mfwrap.mechanisms.composition import read_element_energies  # noqa: E402
from mfwrap.mechanisms.composition_fit import composition_path, fit_composition, fit_linear_composition  # noqa: E402
from mfwrap.train import TrainConfig  # noqa: E402
from mfwrap.train.baselines import Experiment, run_experiment, transfer_freeze  # noqa: E402

BACKBONES = ["schnet", "dimenet", "chgnet"]


@pytest.mark.parametrize("name", BACKBONES)
def test_plain_backbone_composition_is_the_least_squares_fit(name):
    backbone = small_backbone(name)
    graphs = labelled_graphs(12, 0, 1, backbone.graph_spec)
    fit_composition(backbone, graphs)
    fitted = read_element_energies(backbone.get_submodule(composition_path(backbone)))
    expected = fit_linear_composition(
        graphs, prior=read_element_energies(small_backbone(name).get_submodule(composition_path(backbone)))
    )
    torch.testing.assert_close(fitted[[3, 8, 26]], expected[[3, 8, 26]].to(fitted), atol=1e-5, rtol=0)
    assert bool((fitted[[3, 8, 26]] < -1).all())  # the teacher's element energies are -2 .. -8 eV


@pytest.mark.parametrize("name", BACKBONES)
def test_delta_fits_the_residual_to_the_base(name):
    base, correction = small_backbone(name, seed=1), small_backbone(name, seed=2)
    graphs = labelled_graphs(12, 0, 1, base.graph_spec)
    model = DeltaModel(base, correction)
    fit_composition(model, graphs)
    residual = [g.clone() for g in graphs]
    for graph, energy in zip(residual, model.base_energies(graphs)):
        graph["energy"] = graph["energy"] - energy.float()
    expected = fit_linear_composition(
        residual, prior=read_element_energies(small_backbone(name, seed=2).get_submodule(composition_path(correction)))
    )
    fitted = read_element_energies(correction.get_submodule(composition_path(correction)))
    torch.testing.assert_close(fitted[[3, 8, 26]], expected[[3, 8, 26]].to(fitted), atol=1e-4, rtol=0)


class _NoComposition(TinyBackbone):
    """A backbone whose spec names no composition model."""

    fidelity_spec = {key: value for key, value in TinyBackbone.fidelity_spec.items() if key != "composition"}


def test_without_a_composition_model_every_method_says_so():
    graphs = labelled_graphs(4, 0, 0, TinyBackbone().graph_spec)
    with pytest.raises(ValueError, match="has no composition model"):
        fit_composition(_NoComposition(), graphs)
    with pytest.raises(ValueError, match="has no composition model"):
        fit_composition(MultiFidelity(_NoComposition(), ["a", "b"], "ER"), graphs)
    fit_composition(MultiFidelity(_NoComposition(), ["a", "b"], "ECR"), graphs)  # C brings its own


def test_single_and_multi_fidelity_schnet_start_from_the_same_composition_fit(tmp_path):
    """At a learning rate of ~0 the test error is the composition fit's: from scratch it must not depend on the
    method; transfer starts from its pre-trained network, so its fit explains the residual of that network's
    prediction (``composition_reference: auto``) and can only be closer."""
    spec = small_backbone("schnet").graph_spec
    low, high, test = (
        labelled_graphs(16, 0, 0, spec, False),
        labelled_graphs(10, 1, 1, spec),
        labelled_graphs(6, 2, 1, spec),
    )
    errors = {}
    for method in ("single_fidelity", "multi_fidelity", "transfer"):
        config = TrainConfig(epochs=1, batch_size=4, lr=1e-12, output_dir=str(tmp_path), progress=False, targets="e")
        model = {
            "backbone": "backbones.pyg:SchNet",
            "mechanisms": "ECMR",
            "kwargs": dict(hidden_channels=16, num_filters=16, num_interactions=2, num_gaussians=12, cutoff=4.0),
        }
        summary = run_experiment(
            Experiment(method=method, model=model, train=config, pretrain={"epochs": 1}),
            ["low", "high"],
            low + high,
            test=test,
        )
        errors[method] = summary["test"]["high"]["energy"]["mae"]
    # the untrained network adds ~0.5 eV/atom; without a composition fit the error is the element energies (2-8 eV/atom)
    scratch = (errors["single_fidelity"], errors["multi_fidelity"])
    assert max(scratch) < 1.1 * min(scratch) and max(scratch) < 1500, errors  # meV/atom
    assert errors["transfer"] < min(scratch), errors


def test_transfer_freezes_embeddings_and_convolutions_and_trains_the_heads():
    frozen = set(transfer_freeze(small_backbone("chgnet")))
    names = {name for name, _ in small_backbone("chgnet").named_parameters()}
    assert {n for n in names if n.startswith(("atom_embedding.", "atom_convs.", "bond_convs."))} <= frozen
    assert not {n for n in names if n.startswith(("readout.", "magmom_head.", "composition."))} & frozen
