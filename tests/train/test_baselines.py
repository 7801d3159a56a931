"""The harness: multi-fidelity (with ablations), single-fidelity, transfer and Δ-learning runs."""

import pytest
import torch
from tiny_backbone import TinyBackbone, labelled_graphs
from torch_geometric.data import Batch

import mfwrap
from mfwrap.data import keys as K
from mfwrap.delta import DeltaModel
from mfwrap.mechanisms import ResidualFidelityReadout
from mfwrap.mechanisms.composition_fit import fit_linear_composition
from mfwrap.model_file import read_model_file, read_payload
from mfwrap.physics import energy_and_derivatives
from mfwrap.train import TrainConfig, Trainer
from mfwrap.train.baselines import Experiment, initial_backbone, paired_differences, run_experiment, transfer_freeze

SPEC = TinyBackbone().graph_spec
FIDELITIES = ["low", "high"]
LOW = labelled_graphs(16, 0, 0, SPEC, magmoms=False)
HIGH = labelled_graphs(10, 1, 1, SPEC)
HIGH_TEST = labelled_graphs(4, 2, 1, SPEC)
MODEL = {"backbone": "tiny_backbone:TinyBackbone", "kwargs": {"features": 8}}


def _experiment(tmp_path, method, **extra):
    train = TrainConfig(epochs=2, batch_size=4, output_dir=str(tmp_path), progress=False, seed=0)
    return Experiment(method=method, model=dict(MODEL, **extra.pop("model", {})), train=train, **extra)


def _outputs(model, graphs):
    return energy_and_derivatives(model, Batch.from_data_list(graphs))


@pytest.mark.parametrize("mechanisms", ["ECMR", "M"])
def test_multi_fidelity_run_and_reload(tmp_path, mechanisms):
    summary = run_experiment(
        _experiment(tmp_path, "multi_fidelity", model={"mechanisms": mechanisms}),
        FIDELITIES,
        LOW + HIGH,
        test=HIGH_TEST,
    )
    assert set(summary["test"]) == {"high"} and summary["test"]["high"]["forces"]["count"] == 4 * 4 * 3
    model, checkpoint = read_model_file(tmp_path / "multi_fidelity" / "best.pt")
    assert checkpoint["architecture"]["config"]["mechanisms"] == mechanisms and list(model.fidelity_names) == FIDELITIES
    # the reloaded model reproduces the reported test error
    out = _outputs(model, HIGH_TEST)
    n = torch.tensor([4.0] * 4)
    mae = float((out[K.ENERGY].detach() / n - torch.cat([g[K.ENERGY] for g in HIGH_TEST]) / n).abs().mean()) * 1000
    assert mae == pytest.approx(summary["test"]["high"]["energy"]["mae"], rel=1e-4)


def test_single_fidelity_sees_only_target_data(tmp_path):
    run_experiment(_experiment(tmp_path, "single_fidelity"), FIDELITIES, LOW + HIGH, test=HIGH_TEST)
    last = read_payload(tmp_path / "single_fidelity" / "last.pt")
    assert last["num_train"] == 9  # 10 high-fidelity structures minus 1 held out for validation
    assert last["architecture"]["class"] == "tiny_backbone:TinyBackbone"


def test_transfer_freeze_keeps_heads_trainable():
    frozen = transfer_freeze(TinyBackbone())
    assert "atom_embedding.weight" in frozen and "filters.0.weight" in frozen and "updates.1.bias" in frozen
    assert not any(name.startswith(("readout.", "magmom_head.", "composition.")) for name in frozen)


def test_transfer_fine_tunes_only_the_readout(tmp_path):
    run_experiment(_experiment(tmp_path, "transfer", pretrain={"epochs": 1}), FIDELITIES, LOW + HIGH, test=HIGH_TEST)
    pretrained = read_payload(tmp_path / "pretrain" / "best.pt")["state_dict"]
    tuned = read_payload(tmp_path / "transfer" / "best.pt")["state_dict"]
    assert torch.equal(pretrained["atom_embedding.weight"], tuned["atom_embedding.weight"])
    assert torch.equal(pretrained["filters.1.weight"], tuned["filters.1.weight"])
    assert not torch.equal(pretrained["readout.0.weight"], tuned["readout.0.weight"])
    assert read_payload(tmp_path / "pretrain" / "last.pt")["config"]["epochs"] == 1


def test_delta_with_paired_labels(tmp_path):
    low_twins = labelled_graphs(10, 1, 0, SPEC, magmoms=False)  # the same structures as HIGH
    experiment = _experiment(tmp_path, "delta")
    summary = run_experiment(experiment, FIDELITIES, LOW + low_twins + HIGH, test=HIGH_TEST)
    assert summary["test"]["high"]["magmoms"]["count"] == 16
    model, _ = read_model_file(tmp_path / "delta" / "best.pt")
    assert isinstance(model, DeltaModel)
    combined = _outputs(model, HIGH_TEST)[K.ENERGY]
    parts = _outputs(model.base, HIGH_TEST)[K.ENERGY] + _outputs(model.delta, HIGH_TEST)[K.ENERGY]
    assert torch.allclose(combined, parts, atol=1e-5)
    # the base is the pre-trained low-fidelity model, frozen and unchanged
    pretrained = read_payload(tmp_path / "pretrain" / "best.pt")["state_dict"]
    assert all(torch.equal(value, pretrained[name]) for name, value in model.base.state_dict().items())
    assert not any(p.requires_grad for p in model.base.parameters())
    # the correction's composition is the least-squares fit of E_high - E_low on its training split
    pairs = paired_differences(HIGH, low_twins)
    split, _ = Trainer(TinyBackbone(), experiment.train).split_validation(pairs)
    expected = fit_linear_composition(split, prior=torch.zeros(95, dtype=torch.float64))
    fitted = model.delta.composition.element_energies.double()  # index Z - 1
    torch.testing.assert_close(fitted[[2, 7, 25]], expected[[3, 8, 26]], atol=1e-5, rtol=0)


def test_delta_with_the_model_as_reference_fits_the_residual_to_the_base(tmp_path):
    experiment = _experiment(tmp_path, "delta", delta_reference="model")
    run_experiment(experiment, FIDELITIES, LOW + HIGH, HIGH[:2], HIGH_TEST)
    model, _ = read_model_file(tmp_path / "delta" / "best.pt")
    base_energy = model.base_energies(HIGH)
    residual = [g.clone() for g in HIGH]
    for graph, energy in zip(residual, base_energy):
        graph[K.ENERGY] = graph[K.ENERGY] - energy.float()
    expected = fit_linear_composition(residual, prior=torch.zeros(95, dtype=torch.float64))
    fitted = model.delta.composition.element_energies.double()
    torch.testing.assert_close(fitted[[2, 7, 25]], expected[[3, 8, 26]], atol=1e-4, rtol=0)


def test_delta_labels_without_pairs_is_a_clear_error_and_model_reference_works(tmp_path):
    with pytest.raises(ValueError, match="needs paired data"):
        paired_differences(HIGH, LOW)
    twins = labelled_graphs(10, 1, 0, SPEC, magmoms=False)
    diff = paired_differences(HIGH, twins)
    assert torch.allclose(diff[0][K.ENERGY], HIGH[0][K.ENERGY] - twins[0][K.ENERGY])
    assert torch.equal(diff[0][K.MAGMOMS], HIGH[0][K.MAGMOMS])
    summary = run_experiment(
        _experiment(tmp_path, "delta", delta_reference="model"), FIDELITIES, LOW + HIGH, HIGH[:2], HIGH_TEST
    )
    assert summary["best"]["epoch"] >= 0 and "forces" in summary["test"]["high"]


def test_multi_fidelity_warm_start_begins_from_the_low_fidelity_model(tmp_path):
    experiment = _experiment(tmp_path, "multi_fidelity", warm_start=True, pretrain={"epochs": 1})
    experiment.train.lr = 1e-12  # the final stage barely moves: its weights are where it started
    run_experiment(experiment, FIDELITIES, LOW + HIGH, test=HIGH_TEST)
    pretrained = read_payload(tmp_path / "pretrain" / "best.pt")["state_dict"]
    wrapped = read_payload(tmp_path / "multi_fidelity" / "best.pt")["state_dict"]
    for name in ("atom_embedding", "filters.0", "updates.1"):  # under E / M the backbone's layer sits one level down
        inner = "embedding" if name == "atom_embedding" else "linear"
        torch.testing.assert_close(
            wrapped[f"backbone.{name}.{inner}.weight"], pretrained[f"{name}.weight"], rtol=0, atol=1e-9
        )
    with pytest.raises(ValueError, match="warm_start is an option of multi_fidelity"):
        Experiment(method="transfer", warm_start=True)


@pytest.mark.parametrize("fidelity_init", ["zero", "random"])
def test_multi_fidelity_starts_from_the_identity_or_from_drawn_fidelity_parameters(tmp_path, fidelity_init):
    experiment = _experiment(tmp_path, "multi_fidelity", model={"fidelity_init": fidelity_init})
    experiment.train.lr = 1e-12  # the weights stay where they started
    run_experiment(experiment, FIDELITIES, LOW + HIGH)
    state = read_payload(tmp_path / "multi_fidelity" / "best.pt")["state_dict"]
    fidelity_terms = [value for name, value in state.items() if name.endswith(("fidelity_vectors", "fidelity_weight"))]
    copies = {name.split(".copies.")[1].split(".", 1)[1]: [] for name in state if ".copies." in name}
    for name, value in state.items():
        if ".copies." in name:
            copies[name.split(".copies.")[1].split(".", 1)[1]].append(value)
    assert len(fidelity_terms) >= 2 and copies and all(len(pair) == 2 for pair in copies.values())
    copies_equal = all(torch.equal(*pair) for pair in copies.values())
    if fidelity_init == "zero":
        assert all(float(t.abs().max()) < 1e-9 for t in fidelity_terms) and copies_equal
    else:
        assert all(float(t.abs().max()) > 1e-3 for t in fidelity_terms) and not copies_equal
    with pytest.raises(ValueError, match="fidelity_init is an option of multi_fidelity"):
        Experiment(method="single_fidelity", model=dict(MODEL, fidelity_init="random"))
    with pytest.raises(ValueError, match="must be 'zero' or 'random'"):
        Experiment(model=dict(MODEL, fidelity_init="normal"))


def test_multi_fidelity_with_a_residual_readout_trains_its_shared_part_on_every_fidelity(tmp_path):
    experiment = _experiment(tmp_path, "multi_fidelity", model={"readout": "residual"})
    run_experiment(experiment, FIDELITIES, LOW + HIGH)
    model = mfwrap.load(tmp_path / "multi_fidelity" / "best.pt")
    assert model.readout == "residual"
    readouts = {m.name: m for m in model.fidelity_modules() if isinstance(m, ResidualFidelityReadout)}
    assert sorted(readouts) == ["magmom_head", "readout"]
    trained = {
        name: [all(float(d.detach().abs().max()) > 0 for d in residual) for residual in r.residuals]
        for name, r in readouts.items()
    }
    # residuals start at zero; the energy readout's move for both fidelities, the magmom head's only for the
    # high one: the low fidelity has no magmom labels (masked, so no gradient)
    assert trained == {"readout": [True, True], "magmom_head": [False, True]}
    with pytest.raises(ValueError, match="readout is an option of multi_fidelity"):
        Experiment(method="transfer", model=dict(MODEL, readout="residual"))
    with pytest.raises(ValueError, match="model: readout must be one of"):
        Experiment(model=dict(MODEL, readout="shared"))


@pytest.mark.parametrize(
    "method, extra",
    [("multi_fidelity", {"model": {"fidelity_init": "random"}}), ("transfer", {"pretrain": {"epochs": 1, "seed": 5}})],
)
def test_a_backbone_built_before_the_graphs_gives_the_same_run(tmp_path, method, extra):
    """mfwrap train and the suite build the backbone once, read its graph_spec, then hand it over."""
    built_here = run_experiment(
        _experiment(tmp_path / "a", method, **dict(extra)), FIDELITIES, LOW + HIGH, test=HIGH_TEST
    )
    experiment = _experiment(tmp_path / "b", method, **dict(extra))
    handed = run_experiment(experiment, FIDELITIES, LOW + HIGH, test=HIGH_TEST, backbone=initial_backbone(experiment))
    assert handed["test"] == built_here["test"] and handed["best"] == built_here["best"]
    states = [read_payload(tmp_path / run / method / "best.pt")["state_dict"] for run in ("a", "b")]
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])
