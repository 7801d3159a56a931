"""The composition fit of a model that starts from trained weights: a per-element correction fitted to
the residual of its own prediction, and the origin fidelity of a pretrained model kept exactly."""

import numpy as np
import pytest
import torch

import mfwrap
from mf_models import ELEMENTS, random_crystal, small_backbone
from mfwrap.data import keys as K
from mfwrap.data.graph import to_graph
from mfwrap.mechanisms.composition import FidelityComposition
from mfwrap.mechanisms.composition_fit import fit_composition, model_energies, with_energies
from mfwrap.model_file import ELEMENTS_UNKNOWN, starts_trained
from mfwrap.train import TrainConfig, Trainer


def _graphs(model, count, fidelity=0, seed=0):
    rng = np.random.default_rng(seed)
    structures = [random_crystal(rng, max_atoms=6) for _ in range(count)]
    return [
        to_graph(s, model.graph_spec, fidelity=fidelity, labels={K.ENERGY: 0.0}, on_isolated_atoms="ignore")
        for s in structures
    ]


def _shifted(model, graphs, shift: dict[int, float]):
    """``graphs`` labelled E_model + Σ_Z shift_Z n_Z: a residual a per-element correction explains exactly."""
    offsets = torch.tensor([sum(shift[int(z)] for z in g[K.ATOMIC_NUMBERS]) for g in graphs], dtype=torch.float64)
    return with_energies(graphs, model_energies(model, graphs) + offsets)


SHIFT = {3: 0.31, 8: -0.12, 15: 0.45, 26: -0.27}


def _mae(model, graphs):
    labels = torch.stack([g[K.ENERGY].double().reshape(()) for g in graphs])
    return float((model_energies(model, graphs) - labels).abs().mean())


def test_residual_fit_explains_a_per_element_shift_of_the_model_exactly_and_the_raw_fit_does_not():
    model = small_backbone("chgnet")
    graphs = _shifted(model, _graphs(model, 16), SHIFT)
    raw = small_backbone("chgnet")
    fit_composition(raw, graphs)
    fit_composition(model, graphs, residual=True)
    assert _mae(model, graphs) < 1e-4  # eV
    assert _mae(raw, graphs) > 100 * _mae(model, graphs)


def test_residual_fit_per_fidelity_moves_the_new_fidelity_and_keeps_the_origin():
    backbone = small_backbone("chgnet")
    mf = mfwrap.MultiFidelity(backbone, ["pbe", "r2scan"], "ECMR", origin="pbe")
    table = next(m for m in mf.modules() if isinstance(m, FidelityComposition))
    origin_before = table.element_energies[0].clone()
    high = _shifted(mf, _graphs(mf, 12, fidelity=1, seed=1), SHIFT)
    low = _shifted(mf, _graphs(mf, 12, fidelity=0, seed=2), {z: 1.0 for z in ELEMENTS})
    mf.fit_composition(high + low, residual=True)
    assert _mae(mf, high) < 1e-4
    assert torch.equal(table.element_energies[0], origin_before)  # the origin's weights are the backbone's


def test_residual_fit_leaves_a_fidelity_without_data_as_it_was():
    mf = mfwrap.MultiFidelity(small_backbone("chgnet"), ["a", "b", "c"], "C")
    table = next(m for m in mf.modules() if isinstance(m, FidelityComposition))
    before = table.element_energies.detach().clone()
    mf.fit_composition(_shifted(mf, _graphs(mf, 10, fidelity=1), SHIFT), residual=True)
    assert torch.equal(table.element_energies[0], before[0]) and torch.equal(table.element_energies[2], before[2])
    assert not torch.equal(table.element_energies[1], before[1])


def test_trainer_auto_fits_the_residual_of_a_model_that_starts_trained_and_the_labels_of_a_fresh_one(tmp_path):
    fresh, trained = small_backbone("chgnet"), small_backbone("chgnet")
    trained.trained_elements = ELEMENTS_UNKNOWN
    assert starts_trained(trained) and not starts_trained(fresh)
    graphs = _shifted(trained, _graphs(trained, 12), SHIFT)
    errors = {}
    for name, model in (("fresh", fresh), ("trained", trained)):
        config = TrainConfig(epochs=1, batch_size=12, lr=1e-12, output_dir=str(tmp_path / name), progress=False)
        Trainer(model, config).fit(graphs)
        errors[name] = _mae(mfwrap.load(tmp_path / name / "best.pt"), graphs)
    assert errors["trained"] < 1e-3
    assert errors["fresh"] > 10 * errors["trained"]


def test_composition_reference_must_be_a_known_choice():
    with pytest.raises(ValueError, match="composition_reference must be 'auto', 'labels' or 'residual'"):
        TrainConfig(composition_reference="raw")


def _lmfp_high(count):
    from mfwrap.datasets.registry import DATASETS, Split

    records = DATASETS["lmfp"].split(Split(n_high=count, n_val=0)).train_high
    return records


def test_pretrained_chgnet_residual_fit_starts_fine_tuning_near_the_labels():
    """CHGNet 0.3.0 on r2SCAN-teacher LMFP frames: the residual refit's zero-shot error is that of the best
    per-element shift of the pretrained prediction, far below the raw refit's (which discards what the network
    predicts) and below the unrefitted model's."""
    from backbones.chgnet import CHGNet

    pretrained = CHGNet.from_pretrained("0.3.0")
    graphs = [r.to_graph(pretrained.graph_spec, {"low": 0, "high": 1}) for r in _lmfp_high(12)]
    graphs = [g.clone() for g in graphs]
    for g in graphs:
        g[K.FIDELITY] = torch.zeros_like(g[K.FIDELITY])
    atoms = torch.tensor([g[K.ATOMIC_NUMBERS].numel() for g in graphs], dtype=torch.float64)

    def per_atom_mae(model):
        labels = torch.stack([g[K.ENERGY].double().reshape(()) for g in graphs])
        return float(((model_energies(model, graphs) - labels) / atoms).abs().mean())

    untouched = per_atom_mae(pretrained)
    raw, residual = CHGNet.from_pretrained("0.3.0"), CHGNet.from_pretrained("0.3.0")
    fit_composition(raw, graphs)
    fit_composition(residual, graphs, residual=True)
    assert per_atom_mae(residual) < untouched
    assert per_atom_mae(residual) < 0.2 * per_atom_mae(raw)


def test_origin_of_a_pretrained_model_is_the_pretrained_model_at_every_fidelity_until_trained():
    from backbones.chgnet import CHGNet
    from mf_models import batch_of, evaluate

    pretrained = CHGNet.from_pretrained("0.3.0")
    mf = mfwrap.MultiFidelity(pretrained, ["mptrj_pbe", "r2scan"], "ECMR", origin="mptrj_pbe")
    rng = np.random.default_rng(3)
    structures = [random_crystal(rng, max_atoms=5) for _ in range(2)]
    expected = evaluate(pretrained, batch_of(structures, pretrained.graph_spec, [0, 0]))
    for fidelity in (0, 1):
        got = evaluate(mf, batch_of(structures, mf.graph_spec, [fidelity, fidelity]))
        for key in (K.ENERGY, K.FORCES, K.STRESS, K.MAGMOMS):
            np.testing.assert_array_equal(got[key], expected[key], err_msg=f"{key} at fidelity {fidelity}")
    mf.add_fidelity("pbe_u")
    assert mf.fidelity_names == ("mptrj_pbe", "r2scan", "pbe_u")


def test_origin_is_kept_in_the_model_file_and_an_unknown_origin_names_the_fidelities(tmp_path):
    mf = mfwrap.MultiFidelity(small_backbone("chgnet"), ["pbe", "r2scan"], "EC", origin="pbe")
    mf.save(tmp_path / "mf.pt")
    assert mfwrap.load(tmp_path / "mf.pt").origin == "pbe"
    with pytest.raises(
        ValueError, match=r"unknown fidelity 'mptrj' \(known: \['pbe', 'r2scan'\]\); choose one with origin="
    ):
        mfwrap.MultiFidelity(small_backbone("chgnet"), ["pbe", "r2scan"], "EC", origin="mptrj")
