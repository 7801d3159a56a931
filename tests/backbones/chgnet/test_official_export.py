"""A native CHGNet written as an official checkpoint (``mfwrap export --format chgnet``): the official
``chgnet`` package loads it with ``CHGNet.from_file`` and predicts what the exported model predicts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_equivalence import TOLERANCE  # eV/atom, eV/Å, GPa, μB: float32 on both sides

import mfwrap
from backbones.chgnet import CHGNet
from backbones.chgnet.pretrained import convert_state_dict, official_state_dict, save_official
from mfwrap.cli import main
from mfwrap.symmetry import randomise_fidelity_parameters


def _assert_official_predicts(path, structures, expected):
    """chgnet's ``CHGNet.from_file(path)`` predicts ``expected`` (mfwrap.predict's dicts) on ``structures``."""
    from chgnet.model import CHGNet as OfficialCHGNet

    official = OfficialCHGNet.from_file(str(path))
    for structure, ref, pred in zip(structures, official.predict_structure(structures, task="efsm"), expected):
        assert abs(pred["energy"] / len(structure) - float(ref["e"])) <= TOLERANCE["energy_per_atom"]
        assert np.abs(pred["forces"] - ref["f"]).max() <= TOLERANCE["forces"]
        assert np.abs(pred["stress"] - ref["s"]).max() <= TOLERANCE["stress"]
        assert np.abs(pred["magmoms"] - ref["m"]).max() <= TOLERANCE["magmoms"]
    return official


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")  # chgnet's calculator, on stress
def test_an_exported_fidelity_of_pretrained_chgnet_runs_in_official_chgnet(test_structures, tmp_path):
    from chgnet.model.dynamics import CHGNetCalculator

    structures = [test_structures["Si_primitive"], test_structures["SrTiO3_cubic"]]
    torch.manual_seed(0)
    model = mfwrap.MultiFidelity(CHGNet.from_pretrained("0.3.0"), ["mptrj_pbe", "r2scan"], "ECMR")
    model.draw_fidelity_parameters()  # r2scan: a fresh readout, X_f and W_F drawn
    randomise_fidelity_parameters(model, scale=0.05, seed=2)  # and composition rows that differ
    model.save(tmp_path / "mf.pt")
    out = tmp_path / "r2scan.pth.tar"
    argv = ["export", str(tmp_path / "mf.pt"), "--fidelity", "r2scan", "--output", str(out), "--format", "chgnet"]
    assert main(argv) == 0
    expected = mfwrap.predict(model.export("r2scan"), structures)
    wrapped = mfwrap.predict(model, structures, fidelity="r2scan")
    pretrained = mfwrap.predict(CHGNet.from_pretrained("0.3.0"), structures)
    for ours, at_fidelity, base in zip(expected, wrapped, pretrained):
        assert abs(ours["energy"] - at_fidelity["energy"]) <= 1e-4 * max(1.0, abs(ours["energy"]))
        assert abs(ours["energy"] - base["energy"]) > 1e-2  # the fidelity's parameters are in the file
    official = _assert_official_predicts(out, structures, expected)
    atoms = structures[1].to_ase_atoms()
    atoms.calc = CHGNetCalculator(model=official, use_device="cpu")
    assert abs(atoms.get_potential_energy() - expected[1]["energy"]) <= 1e-4 * len(atoms)


def test_the_mapping_is_inverted_exactly_for_other_architectures(test_structures, tmp_path):
    torch.manual_seed(1)
    model = CHGNet(
        atom_fea_dim=8,
        bond_fea_dim=8,
        angle_fea_dim=8,
        num_radial=5,
        num_angular=5,
        n_conv=3,
        atom_conv_hidden_dim=[8, 8],
        bond_conv_hidden_dim=8,
        angle_layer_hidden_dim=8,
        mlp_hidden_dims=8,
        mlp_out_bias=True,
        conv_norm="layer",
    )
    with torch.no_grad():
        model.composition.element_energies.uniform_(-5.0, -1.0)
    state = model.state_dict()
    back = convert_state_dict(official_state_dict(model), model)
    assert sorted(back) == sorted(state) and all(torch.equal(back[k], state[k]) for k in state)
    save_official(model, tmp_path / "tiny.pth.tar")
    structures = [test_structures["NaCl_triclinic"], test_structures["SrTiO3_cubic"]]
    _assert_official_predicts(tmp_path / "tiny.pth.tar", structures, mfwrap.predict(model, structures))
    no_bond_updates = CHGNet(atom_fea_dim=8, bond_fea_dim=8, angle_fea_dim=8, n_conv=2, update_bond=False)
    save_official(no_bond_updates, tmp_path / "atoms_only.pth.tar")  # official builds no (unused) angle updates
    _assert_official_predicts(tmp_path / "atoms_only.pth.tar", structures, mfwrap.predict(no_bond_updates, structures))


def test_an_architecture_official_chgnet_cannot_build_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="official CHGNet embeds elements Z = 1..94; this model has max_z = 90"):
        save_official(CHGNet(atom_fea_dim=8, bond_fea_dim=8, angle_fea_dim=8, max_z=90), tmp_path / "a.pth.tar")
    assert not any(tmp_path.iterdir())
