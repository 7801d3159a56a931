"""Native CHGNet: construction, config round trip, weight loading errors, autograd, module contract."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch_geometric.data import Batch

import mfwrap
from backbones.chgnet import CHGNet, pretrained
from backbones.chgnet.mlp import FactorisedLinear
from mfwrap.data.graph import to_graph
from mfwrap.physics import energy_and_derivatives


def _batch(model, structures):
    return Batch.from_data_list([to_graph(s, model.graph_spec) for s in structures])


def test_fresh_defaults_are_the_seed_papers_and_match_official_parameter_count():
    model = CHGNet()
    assert model.config["atom_fea_dim"] == 64 and model.config["n_conv"] == 4
    assert model.config["num_radial"] == 31 and model.config["num_angular"] == 31
    assert (model.graph_spec.cutoff, model.graph_spec.line_graph_cutoff) == (6.0, 3.0)
    _, official_state = pretrained.read_checkpoint(pretrained.checkpoint_path("0.3.0"))
    assert sum(p.numel() for p in model.state_dict().values()) == sum(t.numel() for t in official_state.values())


def test_config_rebuilds_the_same_model(test_structures):
    model = CHGNet.from_pretrained("0.2.0")
    assert model.config["num_radial"] == 9 and model.config["atom_graph_cutoff"] == 5
    assert model.config["mlp_out_bias"] and model.config["gmlp_norm"] is None
    rebuilt = CHGNet(**model.config)
    rebuilt.load_state_dict(model.state_dict())
    batch = _batch(model, list(test_structures.values())[:3])
    torch.testing.assert_close(rebuilt(batch)["energy"], model(batch)["energy"], rtol=0, atol=0)


def test_batched_prediction_equals_one_by_one(test_structures):
    """float64, so that only a real batching error (not float32 rounding order) can fail it."""
    model = CHGNet.from_pretrained("0.3.0").double()
    structures = list(test_structures.values())
    together = mfwrap.predict(model, structures, batch_size=16)
    alone = mfwrap.predict(model, structures, batch_size=1)
    for a, b in zip(together, alone):
        assert abs(a["energy"] - b["energy"]) < 1e-10
        for key in ("forces", "stress", "magmoms"):
            torch.testing.assert_close(torch.tensor(a[key]), torch.tensor(b[key]), rtol=0, atol=1e-10)


def test_force_and_stress_loss_gradient_in_the_parameters_is_exact(test_structures):
    """gradcheck of the force + stress loss (a double backward) against finite differences in
    parameters of the embedding, a convolution's neighbour block, the angle basis and the readout."""
    torch.manual_seed(0)
    model = CHGNet(
        atom_fea_dim=4,
        bond_fea_dim=4,
        angle_fea_dim=4,
        num_radial=5,
        num_angular=5,
        n_conv=2,
        atom_conv_hidden_dim=4,
        bond_conv_hidden_dim=4,
        angle_layer_hidden_dim=4,
        mlp_hidden_dims=(4,),
        learnable_rbf=True,
    ).double()
    batch = Batch.from_data_list(
        [
            to_graph(s, model.graph_spec, dtype=torch.float64)
            for s in (test_structures["Si_primitive"], test_structures["NaCl_triclinic"])
        ]
    )
    names = [
        "atom_embedding.embedding.weight",
        "atom_convs.0.message.first.blocks.2.weight",
        "angle_basis.frequencies",
        "readout.mlp.0.weight",
    ]
    params = dict(model.named_parameters())
    chosen = {name: params[name] for name in names if name in params}
    assert len(chosen) == len(names), sorted(set(names) - set(params))
    # only the rows of the two elements present, so the finite differences stay cheap
    rows = torch.tensor(sorted({int(z) - 1 for z in batch["atomic_numbers"]}))
    embedding = chosen.pop("atom_embedding.embedding.weight")

    def loss(embedding_rows, *values):
        table = embedding.index_put((rows,), embedding_rows)
        weights = {**dict(zip(chosen, values)), "atom_embedding.embedding.weight": table}
        out = energy_and_derivatives(
            lambda b: torch.func.functional_call(model, weights, (b,)), batch, create_graph=True
        )
        return out["forces"].square().sum() + 1e-3 * out["stress"].square().sum()

    inputs = (
        embedding[rows].detach().clone().requires_grad_(True),
        *(v.detach().clone().requires_grad_(True) for v in chosen.values()),
    )
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_factorised_linear_equals_linear_on_concatenation():
    torch.manual_seed(0)
    atoms, bonds = torch.randn(5, 4), torch.randn(9, 3)
    rows = (torch.randint(0, 5, (20,)), torch.randint(0, 9, (4,)))  # one longer, one shorter than its source
    layer = FactorisedLinear([4, 3], 6)
    full = nn.Linear(7, 6)
    with torch.no_grad():
        full.weight.copy_(torch.cat([b.weight for b in layer.blocks], dim=1))
        full.bias.copy_(layer.blocks[0].bias)
    for index_bonds in (torch.randint(0, 9, (20,)), rows[1][:4].repeat(5)):
        got = layer([(atoms, rows[0]), (bonds, index_bonds)])
        torch.testing.assert_close(got, full(torch.cat([atoms[rows[0]], bonds[index_bonds]], dim=1)))
    short = layer([(atoms, rows[0][:3]), (bonds, rows[1][:3])])
    torch.testing.assert_close(short, full(torch.cat([atoms[rows[0][:3]], bonds[rows[1][:3]]], dim=1)))


class _CountingLinear(nn.Linear):
    calls = 0

    def forward(self, x):
        type(self).calls += 1
        self.was_called = True
        return super().forward(x)


def test_every_linear_in_the_convolutions_is_called_as_a_module(test_structures):
    """Surgery swaps nn.Linear modules for subclasses; each must be used through its forward
    (except in the last angle update, whose output no layer reads, so it is not evaluated)."""
    model = CHGNet(n_conv=3)
    swapped = []
    for parent in list(model.atom_convs) + list(model.bond_convs) + list(model.angle_updates)[:-1] + [model.readout]:
        for owner in parent.modules():
            for child in list(owner.children()):
                if type(child) is nn.Linear:
                    child.__class__ = _CountingLinear
                    child.was_called = False
                    swapped.append(child)
    model(_batch(model, [test_structures["ZnO_wurtzite_2x2x1"]]))
    assert swapped and all(layer.was_called for layer in swapped)
    for name in ("atom_embedding", "composition", "readout", "magmom_head"):
        assert isinstance(getattr(model, name), nn.Module)


def test_pretrained_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown CHGNet weights '0.9.9'"):
        CHGNet.from_pretrained("0.9.9")
    corrupt = tmp_path / "broken.pth.tar"
    corrupt.write_bytes(b"not a checkpoint")
    monkeypatch.setattr(pretrained, "checkpoint_path", lambda version: corrupt)
    with pytest.raises(ValueError, match="broken.pth.tar: not a readable CHGNet checkpoint"):
        CHGNet.from_pretrained("0.3.0")
    monkeypatch.undo()
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install chgnet"):
        CHGNet.from_pretrained("0.3.0")


def test_loading_weights_does_not_import_chgnet():
    code = (
        "import sys; from backbones.chgnet import CHGNet; CHGNet.from_pretrained('r2scan'); "
        "assert not any(m == 'chgnet' or m.startswith('chgnet.') for m in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[3])


def test_float32_energy_of_a_large_cell_matches_float64():
    """A 224-atom LiFePO4 supercell: the float32 model's energy per atom within 1e-6 eV of the same
    model in float64 (summing 224 site energies in float32 drifted by 4.6e-6; the per-structure sums
    now accumulate in float64, which took 504 atoms from 4.4e-5 to 2e-7)."""
    import numpy as np
    from pymatgen.core import Structure

    from mfwrap.datasets.structures import lifepo4

    structure = lifepo4((2, 2, 2))
    rng = np.random.default_rng(2)
    cart = structure.cart_coords + rng.normal(0.0, 0.05, (len(structure), 3))
    structure = Structure(structure.lattice, structure.species, cart, coords_are_cartesian=True)
    energies = {}
    for dtype in (torch.float32, torch.float64):
        model = CHGNet.from_pretrained("0.3.0").to(dtype).eval()
        batch = Batch.from_data_list([to_graph(structure, model.graph_spec, dtype=dtype)])
        with torch.no_grad():
            energies[dtype] = model(batch)["energy"].item() / len(structure)
    assert abs(energies[torch.float32] - energies[torch.float64]) < 1e-6
