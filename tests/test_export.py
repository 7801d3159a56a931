"""Exporting one fidelity as the plain backbone: equal outputs at that fidelity, for every mechanism and
readout kind and the shipped backbones; models that cannot be exported are clear errors."""

import numpy as np
import pytest
import torch

import mfwrap
from backbones.chgnet import CHGNet
from backbones.sevenn import SevenNet
from mf_models import batch_of, evaluate, random_crystal, small_backbone
from mfwrap.delta import DeltaModel
from mfwrap.export import export_fidelity
from mfwrap.model_file import read_model_file, save_model
from mfwrap.symmetry import randomise_fidelity_parameters

FIDELITIES = ["pbe", "r2scan"]
SEVENN_SMALL = {
    "chemical_species": ["Li", "O", "Fe", "P"],
    "channel": 4,
    "lmax": 1,
    "num_convolution_layer": 1,
    "cutoff": 4.0,
    "weight_nn_hidden_neurons": [8],
}


@pytest.fixture(scope="module")
def cells():
    rng = np.random.default_rng(3)
    return [random_crystal(rng, max_atoms=4) for _ in range(2)]


def _randomised(backbone, mechanisms, readout="copies"):
    """A float64 model whose fidelities differ in every parameter the surgery added (drawn, then noise,
    composition rows included), so that a fold that drops or misplaces one fails the comparison."""
    torch.manual_seed(0)
    model = mfwrap.MultiFidelity(backbone.double(), FIDELITIES, mechanisms, readout=readout)
    model.draw_fidelity_parameters()
    randomise_fidelity_parameters(model, scale=0.3, seed=1)
    return model


def _outputs(model, cells, fidelity):
    return evaluate(model, batch_of(cells, model.graph_spec, [fidelity] * len(cells), torch.float64))


def _assert_exports_equal(model, cells):
    """Each fidelity's export equals the wrapped model at it (energy, forces, stress, magmoms), and the
    fidelities differ from each other."""
    wrapped = [_outputs(model, cells, f) for f in range(len(FIDELITIES))]
    assert abs(wrapped[0]["energy"] - wrapped[1]["energy"]).max() > 1e-3
    for f, name in enumerate(FIDELITIES):
        exported = model.export(name)
        assert type(exported) is type(model.backbone)
        assert not any(hasattr(m, "context") for m in exported.modules())
        plain = _outputs(exported, cells, 0)  # the fidelity index of the graphs is not read
        assert sorted(plain) == sorted(wrapped[f])
        for key, value in wrapped[f].items():
            np.testing.assert_allclose(plain[key], value, rtol=1e-10, atol=1e-10, err_msg=f"{name}: {key}")


@pytest.mark.parametrize("readout", ["copies", "residual"])
@pytest.mark.parametrize("mechanisms", ["ECMR", "RC", "MC", "E", "M"])
def test_an_exported_chgnet_equals_the_wrapped_model_at_each_fidelity(cells, mechanisms, readout):
    model = _randomised(small_backbone("chgnet"), mechanisms, readout)
    _assert_exports_equal(model, cells)
    exported = model.export("r2scan")
    assert sorted(exported.state_dict()) == sorted(CHGNet(**exported.config).state_dict())


@pytest.mark.parametrize("readout", ["copies", "residual"])
def test_an_exported_schnet_equals_the_wrapped_model_at_each_fidelity(cells, readout):
    _assert_exports_equal(_randomised(small_backbone("schnet"), "ECR", readout), cells)


def test_an_exported_sevennet_equals_the_wrapped_model_at_each_fidelity(cells):
    """With biases in its linears (sevenn's use_bias_in_linear), E and M fold into them, M's term of the
    mixed-irreps self-interactions included (their 0e columns), and C (added) into a species-wise shift;
    the readout folds in any SevenNet."""
    two_layers = {**SEVENN_SMALL, "num_convolution_layer": 2, "use_bias_in_linear": True, "shift": [0.0] * 4}
    model = _randomised(SevenNet(**two_layers), "ECMR", "residual")
    assert model.surgery.restricted  # a term on the 0e columns of a layer with rotating outputs
    _assert_exports_equal(model, cells)
    _assert_exports_equal(_randomised(SevenNet(**SEVENN_SMALL), "R"), cells)


def test_a_fidelity_term_with_no_home_in_the_plain_model_is_a_clear_error():
    schnet = _randomised(small_backbone("schnet"), "M")  # SchNet's filter input layer lin1 has no bias
    with pytest.raises(ValueError, match=r"W_F\[:, f\] of interactions.0.conv.lin1 .*no bias"):
        schnet.export("pbe")
    sevennet = _randomised(SevenNet(**SEVENN_SMALL), "E")  # sevenn's linears have no bias by default
    with pytest.raises(ValueError, match="fidelity embedding X_f into onehot_to_feature_x.linear .*layer with a bias"):
        sevennet.export("pbe")
    scalar_shift = _randomised(SevenNet(**SEVENN_SMALL), "C")
    with pytest.raises(ValueError, match="one scalar energy shift, not one per element"):
        scalar_shift.export("pbe")
    spec = {**CHGNet.fidelity_spec, "composition": None}  # C then adds element energies of its own
    added = mfwrap.MultiFidelity(small_backbone("chgnet"), FIDELITIES, "C", spec=spec)
    with pytest.raises(ValueError, match="has no composition module.*cannot be exported as a plain model"):
        added.export("r2scan")


def test_a_place_holding_a_module_of_unknown_kind_is_a_clear_error():
    model = mfwrap.MultiFidelity(small_backbone("chgnet"), FIDELITIES, "ER")
    model.backbone.readout = torch.nn.Identity()  # what the surgery put there is gone
    with pytest.raises(ValueError, match="readout .* holds a module of type Identity, which has no `folded`"):
        model.export("pbe")


def test_unknown_fidelities_and_delta_models_are_clear_errors():
    model = mfwrap.MultiFidelity(small_backbone("chgnet"), FIDELITIES, "ECMR")
    with pytest.raises(ValueError, match=r"unknown fidelity 'scan' \(known: \['pbe', 'r2scan'\]\)"):
        model.export("scan")
    delta = DeltaModel(small_backbone("chgnet"), small_backbone("chgnet"))
    with pytest.raises(ValueError, match="cannot export a Δ model"):
        export_fidelity(delta, "r2scan")


def test_the_export_keeps_the_elements_record_and_saves_as_the_plain_backbone(cells, tmp_path):
    model = _randomised(small_backbone("chgnet"), "ECMR")
    model.trained_elements = (3, 8, 15, 26)
    exported = model.export("r2scan")
    assert exported.trained_elements == (3, 8, 15, 26)
    save_model(exported, tmp_path / "r2scan.pt")
    loaded, payload = read_model_file(tmp_path / "r2scan.pt")
    assert type(loaded) is CHGNet and payload["fidelity_names"] is None
    assert loaded.trained_elements == (3, 8, 15, 26)
    reloaded = _outputs(loaded.double(), cells, 0)  # the file's weights, read in the default dtype (float32)
    np.testing.assert_allclose(reloaded["forces"], _outputs(model, cells, 1)["forces"], rtol=1e-4, atol=1e-5)
