"""SevenNet adapter: equal to sevenn's own calculator, identity when wrapped, save/load, training.

SevenNet-0 (842k parameters) is loaded once per module and run on small cells only, as is
SevenNet-MF-0 (multi-modal); wrapping and training use fresh models of ~2k parameters.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from torch_geometric.data import Batch

import mfwrap
from backbones.sevenn import SevenNet
from mfwrap.data import keys as K
from mfwrap.data.graph import EV_PER_A3_TO_GPA, to_graph
from mfwrap.physics import energy_and_derivatives
from mfwrap.symmetry import randomise_fidelity_parameters

pytest.importorskip("sevenn")
pytestmark = pytest.mark.filterwarnings("ignore:No tensor product accelerator")  # sevenn's calculator on CPU
sys.path.insert(0, str(Path(__file__).parents[1] / "train"))
from tiny_backbone import labelled_graphs, random_structures  # noqa: E402

SMALL = {
    "chemical_species": ["Li", "O", "Fe", "P"],
    "channel": 8,
    "lmax": 1,
    "num_convolution_layer": 2,
    "cutoff": 4.0,
    "weight_nn_hidden_neurons": [16],
}  # Li, O, Fe, P: the elements of mfwrap's probes


@pytest.fixture(scope="module")
def pretrained():
    return SevenNet.from_pretrained("7net-0")


@pytest.fixture(scope="module")
def cells():
    """Strained, rattled crystals (Si, NaCl) and a molecule in a box: 4, 8 and 9 atoms."""
    silicon = bulk("Si", "diamond", a=5.43) * (2, 1, 1)
    salt = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    for atoms, strain, seed in ((silicon, 0.01, 1), (salt, -0.02, 2)):
        atoms.set_cell(
            atoms.cell.array @ (np.eye(3) + strain * np.array([[1, 0.3, 0], [0.3, -0.5, 0], [0, 0, 0.2]])),
            scale_atoms=True,
        )
        atoms.rattle(0.05, seed=seed)
    ethanol = molecule("CH3CH2OH")
    ethanol.cell, ethanol.pbc = np.eye(3) * 12.0, True
    ethanol.center()
    return [silicon, salt, ethanol]


def _sevenn_reference(calculator, atoms):
    atoms = atoms.copy()
    atoms.calc = calculator
    return atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(voigt=False)


def _assert_equals_sevenn(model, calculator, structures, fidelity=None):
    """Energy within 1e-5 eV/atom, forces 1e-4 eV/Å, stress 5e-4 GPa (float32). mfwrap's stress is
    (1/V) ∂E/∂ε in GPa, ASE's the same in eV/Å^3: same sign, factor EV_PER_A3_TO_GPA."""
    for atoms, ours in zip(structures, mfwrap.predict(model, structures, fidelity=fidelity)):
        energy, forces, stress = _sevenn_reference(calculator, atoms)
        assert abs(ours["energy"] - energy) / len(atoms) < 1e-5
        np.testing.assert_allclose(ours["forces"], forces, rtol=0, atol=1e-4)
        np.testing.assert_allclose(ours["stress"], stress * EV_PER_A3_TO_GPA, rtol=0, atol=5e-4)
    assert np.abs(stress).max() * EV_PER_A3_TO_GPA > 0.01  # the comparison is not of zeros


def test_pretrained_equals_sevenn_calculator(pretrained, cells):
    from sevenn.calculator import SevenNetCalculator

    assert pretrained.graph_spec.cutoff == 5.0 and pretrained.config == {"pretrained": "7net-0"}
    _assert_equals_sevenn(pretrained, SevenNetCalculator("7net-0", device="cpu"), cells)


def test_an_existing_sevenn_model_is_adapted_with_its_weights():
    """A fresh sevenn model (parity, polynomial cutoff: other irreps and envelope than SevenNet-0)."""
    from sevenn.calculator import SevenNetCalculator
    from sevenn.model_build import build_E3_equivariant_model

    from backbones.sevenn import model_config

    torch.manual_seed(0)
    config = model_config({**SMALL, "shift": [-1.0, -2.0, -3.0, -4.0], "scale": 1.5})
    net = build_E3_equivariant_model(dict(config))
    adapter = SevenNet.from_sevenn(net, config)
    assert adapter.get_submodule("0_convolution") is net._modules["0_convolution"]  # shared, not copied
    structures = random_structures(2, seed=5)
    predicted = mfwrap.predict(adapter, structures)
    _assert_equals_sevenn(adapter, SevenNetCalculator(net, file_type="model_instance", device="cpu"), structures)
    rebuilt = type(adapter)(**adapter.config)  # the config rebuilds the architecture
    rebuilt.load_state_dict(adapter.state_dict())
    assert mfwrap.predict(rebuilt, structures)[1]["energy"] == pytest.approx(predicted[1]["energy"], abs=1e-6)


def test_a_sevenn_checkpoint_is_adapted_and_its_config_rebuilds_it(pretrained, cells):
    from sevenn.util import load_checkpoint

    adapter = SevenNet.from_sevenn(load_checkpoint("7net-0"))
    assert "optimizer" not in adapter.config and adapter.config["_type_map"][8] == 51  # model keys only; Z -> index
    rebuilt = type(adapter)(**adapter.config)
    rebuilt.load_state_dict(pretrained.state_dict())  # same architecture and state-dict keys as the pretrained one
    expected = mfwrap.predict(pretrained, cells[0])[0]["energy"]
    assert mfwrap.predict(rebuilt, cells[0])[0]["energy"] == pytest.approx(expected, abs=1e-5)


def test_multifidelity_is_the_bare_model_at_initialisation(pretrained, cells):
    mf = mfwrap.MultiFidelity(pretrained, fidelities=["low", "high"], mechanisms="ECMR")
    report = mf.surgery
    assert [report.count(m) for m in "ECMR"] == [1, 0, 10, 2] and mf.composition is not None  # C brings its own
    assert report.places[0][1] == "onehot_to_feature_x.linear"
    # self-interaction linears whose outputs carry 1e/2e parts take the fidelity term on their 0e columns
    assert report.restricted["0_self_interaction_2.linear"] == (224, 224 + 64 * 3 + 32 * 5)
    assert report.restricted["4_self_interaction_1.linear"] == (128, 128 + 64 * 3 + 32 * 5)
    assert "4_self_interaction_2.linear" not in report.restricted  # 224x0e -> 128x0e: all scalar
    assert len(report.restricted) == 8 and report.symmetry.startswith("symmetry checked")  # randomised, float64
    bare = mfwrap.predict(pretrained, cells)
    for fidelity in ("low", "high"):
        for ours, reference in zip(mfwrap.predict(mf, cells, fidelity=fidelity), bare):
            assert ours["energy"] == pytest.approx(reference["energy"], abs=1e-5)
            np.testing.assert_allclose(ours["forces"], reference["forces"], atol=1e-6)
            np.testing.assert_allclose(ours["stress"], reference["stress"], atol=1e-5)


def test_save_and_load_rebuild_the_pretrained_model_offline(pretrained, cells, tmp_path):
    mf = mfwrap.MultiFidelity(pretrained, fidelities=["low", "high"], mechanisms="ECMR")
    randomise_fidelity_parameters(mf, scale=0.01)  # fidelities differ, so the file must carry their terms
    mf.save(tmp_path / "sevennet.pt")
    loaded = mfwrap.load(tmp_path / "sevennet.pt")
    assert loaded.backbone.config == {"pretrained": "7net-0"}
    low, high = (mfwrap.predict(mf, cells[:2], fidelity=f) for f in ("low", "high"))
    assert abs(low[1]["energy"] - high[1]["energy"]) > 1e-3
    for fidelity, expected in (("low", low), ("high", high)):
        for ours, reference in zip(mfwrap.predict(loaded, cells[:2], fidelity=fidelity), expected):
            assert ours["energy"] == pytest.approx(reference["energy"], abs=1e-6)
            np.testing.assert_allclose(ours["forces"], reference["forces"], atol=1e-6)
    # one batch of mixed fidelities: every row gets its own fidelity's terms and readout copy
    graphs = [to_graph(cells[i], loaded.graph_spec, fidelity=f) for i, f in ((0, 0), (1, 1), (0, 1))]
    mixed = energy_and_derivatives(loaded, Batch.from_data_list(graphs), stress=False)[K.ENERGY].detach()
    expected = [low[0]["energy"], high[1]["energy"], high[0]["energy"]]
    np.testing.assert_allclose(mixed.numpy(), expected, rtol=0, atol=1e-4)


def test_an_unknown_element_is_a_clear_error(pretrained):
    polonium = bulk("Po", "sc", a=3.35)
    with pytest.raises(ValueError, match=r"Po \(Z=84\)"):
        mfwrap.predict(pretrained, polonium)
    with pytest.raises(ValueError, match=r"Na \(Z=11\)"):
        mfwrap.predict(SevenNet(**SMALL), bulk("Na", "bcc", a=4.2))
    with pytest.raises(ValueError, match="chemical_species"):
        SevenNet(channel=8)
    with pytest.raises(ValueError, match=r"not sevenn model-config keys: \['chanel'\]"):
        SevenNet(chemical_species=["Li"], chanel=8)


def test_a_fidelity_term_on_the_radial_filters_is_rejected():
    """The radial MLP has no biases and its input vanishes at the cutoff, so its outputs (the
    tensor-product weights) do too; a fidelity term there makes the energy jump at the cutoff."""
    spec = {**SevenNet.fidelity_spec, "message": ["*_convolution.weight_nn.*"], "linear_types": {"_Layer": None}}
    with pytest.raises(ValueError, match="jumps by"):
        mfwrap.MultiFidelity(SevenNet(**SMALL), ["low", "high"], "M", spec=spec)


def test_multifidelity_training_reduces_the_loss(tmp_path):
    from mfwrap.train import TrainConfig, Trainer

    torch.manual_seed(0)
    mf = mfwrap.MultiFidelity(SevenNet(**SMALL), ["low", "high"], "ECMR")
    spec = mf.graph_spec
    train = labelled_graphs(8, 0, 0, spec, magmoms=False) + labelled_graphs(4, 1, 1, spec, magmoms=False)
    config = TrainConfig(
        epochs=4,
        batch_size=4,
        lr=0.01,
        targets="ef",
        val_fraction=0.0,
        seed=0,
        output_dir=str(tmp_path),
        progress=False,
    )
    trainer = Trainer(mf, config)
    before = trainer.evaluate(train)
    trainer.fit(train)
    after = trainer.evaluate(train)
    losses = [row["mae"] for row in trainer.history if row["split"] == "train" and row["target"] == "loss"]
    assert len(losses) == 4 and losses[-1] < losses[0]
    for fidelity in ("low", "high"):  # forces: not helped by the composition fit, only by the steps
        assert after[fidelity]["forces"]["mae"] < 0.9 * before[fidelity]["forces"]["mae"]


def test_importing_mfwrap_and_the_adapter_does_not_import_sevenn():
    code = "import sys, mfwrap, backbones, backbones.sevenn; assert 'sevenn' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


MODALITIES = ["low", "high"]


def _multi_modal_sevenn():
    """A fresh multi-modal sevenn model with SevenNet-MF-0's modal layers, its modal one-hot weights
    random (e3nn's initialisation) and modal-wise shifts that differ, with the config it was built from."""
    from sevenn.model_build import build_E3_equivariant_model

    from backbones.sevenn import model_config, multi_modal_options

    torch.manual_seed(0)
    shift = [[-1.0, -2.0, -3.0, -4.0], [-1.5, -2.5, -3.5, -4.5]]  # [modality][species]
    config = model_config({**SMALL, **multi_modal_options(MODALITIES), "shift": shift, "scale": 1.5})
    return build_E3_equivariant_model(copy.deepcopy(config)), config


def test_a_multi_modal_sevenn_model_equals_sevenn_at_each_modality():
    """The batch's fidelity index is sevenn's modality: equal to sevenn's calculator at each
    modality, different between them, and a mixed batch gives each structure its own."""
    from sevenn.calculator import SevenNetCalculator

    from backbones.sevenn import MultiModalSevenNet

    net, config = _multi_modal_sevenn()
    adapter = SevenNet.from_sevenn(net, config)
    assert isinstance(adapter, MultiModalSevenNet) and adapter.fidelity_names == ("low", "high")
    assert net._modules["0_self_interaction_1"].num_modalities == 2 and "one_hot_modality" not in adapter.layer_names
    structures = random_structures(2, seed=5)
    predicted = {}
    for modality in MODALITIES:  # sevenn's calculator switches its model to one structure: give it a copy
        calculator = SevenNetCalculator(copy.deepcopy(net), file_type="model_instance", device="cpu", modal=modality)
        _assert_equals_sevenn(adapter, calculator, structures, modality)
        predicted[modality] = mfwrap.predict(adapter, structures, fidelity=modality)
    low, high = predicted["low"][0], predicted["high"][0]
    assert abs(low["energy"] - high["energy"]) > 0.1 and np.abs(low["forces"] - high["forces"]).max() > 1e-3
    graphs = [to_graph(structures[i], adapter.graph_spec, fidelity=f) for i, f in ((0, 1), (1, 0), (0, 0))]
    mixed = energy_and_derivatives(adapter, Batch.from_data_list(graphs), stress=False)[K.ENERGY].detach()
    expected = [predicted["high"][0]["energy"], predicted["low"][1]["energy"], predicted["low"][0]["energy"]]
    np.testing.assert_allclose(mixed.numpy(), expected, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match=r"2 fidelities \['low', 'high'\]: choose one"):
        mfwrap.predict(adapter, structures[0])
    with pytest.raises(ValueError, match=r"indices \[2\] out of range for the fidelities \['low', 'high'\]"):
        adapter(Batch.from_data_list([to_graph(structures[0], adapter.graph_spec, fidelity=2)]))
    with pytest.raises(ValueError, match="use MultiModalSevenNet"):
        SevenNet(**config)
    rebuilt = MultiModalSevenNet(**adapter.config)  # the config (sevenn's modal keys) rebuilds it
    rebuilt.load_state_dict(adapter.state_dict())
    assert mfwrap.predict(rebuilt, structures[0], fidelity="high")[0]["energy"] == pytest.approx(
        high["energy"], abs=1e-6
    )


def test_sevennet_mf_0_equals_sevenn_calculator_at_each_modality(cells):
    from sevenn.calculator import SevenNetCalculator

    from backbones.sevenn import MultiModalSevenNet

    model = MultiModalSevenNet.from_pretrained("7net-mf-0")
    assert model.fidelity_names == ("R2SCAN", "PBE")
    for modality in model.fidelity_names:
        _assert_equals_sevenn(model, SevenNetCalculator("7net-mf-0", device="cpu", modal=modality), cells[:1], modality)


def test_fit_composition_sets_the_shift_per_modality_and_the_trainer_trains(tmp_path):
    """The trainer fits μ_{m,Z} per modality by least squares and trains the multi-modal model
    as a bare backbone (fidelity names from the model); a scalar shift cannot be fitted per element."""
    from backbones.sevenn import MultiModalSevenNet
    from mfwrap.mechanisms.composition_fit import fit_linear_composition
    from mfwrap.train import TrainConfig, Trainer

    torch.manual_seed(0)
    model = MultiModalSevenNet(**SMALL, modalities=MODALITIES)
    spec = model.graph_spec
    train = labelled_graphs(6, 0, 0, spec, magmoms=False) + labelled_graphs(4, 1, 1, spec, magmoms=False)
    config = TrainConfig(
        epochs=3,
        batch_size=4,
        lr=0.01,
        targets="ef",
        val_fraction=0.0,
        seed=0,
        output_dir=str(tmp_path),
        progress=False,
    )
    trainer = Trainer(model, config)
    assert trainer.fidelity_names == MODALITIES
    before = trainer.evaluate(train)
    trainer.fit(train)
    shift = model.rescale_atomic_energy.shift.detach().double()
    pooled = fit_linear_composition(train)
    numbers = sorted(model.config["_type_map"], key=model.config["_type_map"].get)  # Z of each species index
    for m in range(2):
        own = fit_linear_composition([g for g in train if int(g[K.FIDELITY]) == m], prior=pooled)
        np.testing.assert_allclose(shift[m].numpy(), own[numbers].numpy(), atol=1e-5)
    after = trainer.evaluate(train)
    for fidelity in MODALITIES:
        assert after[fidelity]["forces"]["mae"] < 0.9 * before[fidelity]["forces"]["mae"]
    with pytest.raises(ValueError, match=r"shift=\[0.0\] \* 4"):
        SevenNet(**SMALL).fit_composition(train)


def test_a_model_of_other_elements_is_wrapped_with_probes_of_its_own_elements():
    backbone = SevenNet(chemical_species=["Si", "C"], channel=4, lmax=1, num_convolution_layer=1)
    assert backbone.supported_numbers == [6, 14]
    mf = mfwrap.MultiFidelity(backbone, ["low", "high"], "ECMR")
    assert mf.surgery.symmetry.startswith("symmetry checked")


def test_sevennet0_gains_a_fidelity_its_origin_kept_through_the_residual_composition_fit(pretrained, cells):
    """SevenNet-0 as a foundation model: the origin fidelity stays SevenNet-0 after the residual fit of the
    per-fidelity composition (C added: SevenNet has no composition module), and the new fidelity's energies
    become SevenNet-0's plus the per-element shift that its labels carry."""
    mf = mfwrap.MultiFidelity(pretrained, ["mptrj_pbe", "r2scan"], "ECMR", origin="mptrj_pbe")
    bare = mfwrap.predict(pretrained, cells, stress=False)
    shift = {z: 0.1 * z % 0.7 - 0.3 for c in cells for z in set(c.numbers)}  # eV/atom, per element
    labels = [b["energy"] + sum(shift[z] for z in c.numbers) for b, c in zip(bare, cells)]
    graphs = [to_graph(c, mf.graph_spec, fidelity=1, labels={K.ENERGY: e}) for c, e in zip(cells, labels)]
    graphs += [
        to_graph(c, mf.graph_spec, fidelity=0, labels={K.ENERGY: b["energy"] + 5.0}) for c, b in zip(cells, bare)
    ]
    mf.fit_composition(graphs, residual=True)
    for ours, reference in zip(mfwrap.predict(mf, cells, fidelity="mptrj_pbe", stress=False), bare):
        assert ours["energy"] == pytest.approx(reference["energy"], abs=1e-5)
    for ours, label in zip(mfwrap.predict(mf, cells, fidelity="r2scan", stress=False), labels):
        assert ours["energy"] == pytest.approx(label, abs=1e-3)


def test_a_deep_copy_of_a_used_model_saves_and_loads(tmp_path, pretrained, cells):
    """e3nn turns its generated tensor-product code's constants into buffers in a deep copy of a model that
    has run; they are not state (derived from the irreps): the saved file of the copy loads into a rebuilt
    model, and states load both ways between the copy and the original."""
    import copy

    model = copy.deepcopy(pretrained)
    reference = mfwrap.predict(model, cells, stress=False)
    duplicate = copy.deepcopy(model)
    assert any("_tensor_constant" in name for name, _ in duplicate.named_buffers())  # what e3nn does
    assert not any("_tensor_constant" in key for key in duplicate.state_dict())
    mfwrap.save(duplicate, tmp_path / "copy.pt")
    loaded = mfwrap.load(tmp_path / "copy.pt")
    duplicate.load_state_dict(model.state_dict())
    model.load_state_dict(duplicate.state_dict())
    for ours, theirs in zip(mfwrap.predict(loaded, cells, stress=False), reference):
        assert ours["energy"] == pytest.approx(theirs["energy"], abs=1e-6)
