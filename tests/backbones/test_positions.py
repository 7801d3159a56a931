"""PositionsModel: a (z, pos, batch) PyG potential as a backbone — equal to its own call, refuses crystals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch_geometric.nn.models.schnet as pyg_schnet
from ase.build import molecule

import mfwrap
from backbones.positions import PositionsModel
from backbones.pyg import SchNet
from mfwrap.datasets.structures import lifepo4

SPEC = {"embedding": "model.embedding", "message": ["model.interactions.*"], "readout": ["model.lin1", "model.lin2"]}


def brute_radius_graph(pos, r, batch=None, max_num_neighbors=None, **kwargs):
    """All pairs of one structure closer than r (PyG's radius_graph needs torch-cluster)."""
    same = torch.ones(len(pos), len(pos), dtype=torch.bool) if batch is None else batch[:, None] == batch[None, :]
    centre, neighbour = ((torch.cdist(pos, pos) < r) & same & ~torch.eye(len(pos), dtype=torch.bool)).nonzero().t()
    return torch.stack([neighbour, centre])


@pytest.fixture
def net(monkeypatch):
    monkeypatch.setattr(pyg_schnet, "radius_graph", brute_radius_graph)  # PyG's needs torch-cluster
    torch.manual_seed(0)
    return pyg_schnet.SchNet(hidden_channels=16, num_filters=16, num_interactions=2, num_gaussians=10, cutoff=4.0)


def _molecules():
    found = []
    for name in ("CH3CH2OH", "H2O", "CH4"):
        atoms = molecule(name)
        atoms.cell, atoms.pbc = np.eye(3) * 20, True
        atoms.positions += 10
        found.append(atoms)
    return found


def test_equals_the_models_own_call_and_the_periodic_adapter_on_molecules(net):
    structures = _molecules()
    ours = mfwrap.predict(PositionsModel.wrap(net), structures)
    periodic = mfwrap.predict(SchNet.from_pyg(net), structures)
    for atoms, a, b in zip(structures, ours, periodic):
        pos = torch.tensor(atoms.positions, dtype=torch.float32, requires_grad=True)
        energy = net(torch.tensor(atoms.numbers), pos, torch.zeros(len(atoms), dtype=torch.long))
        forces = -torch.autograd.grad(energy.sum(), pos)[0]
        assert a["energy"] == pytest.approx(float(energy.detach()), abs=1e-5)
        np.testing.assert_allclose(a["forces"], forces.numpy(), atol=1e-5)
        assert a["energy"] == pytest.approx(b["energy"], abs=1e-5)


def test_a_crystal_is_refused_naming_the_structure(net):
    with pytest.raises(
        ValueError, match=r"structure\(s\) \[1\] .*periodic images of neighbours within 4.0 Å; SchNet's forward"
    ):
        mfwrap.predict(PositionsModel.wrap(net), [_molecules()[0], lifepo4()])


def test_multi_fidelity_on_it_keeps_identity_and_symmetry_and_saves_when_rebuildable(net, tmp_path):
    kwargs = {"hidden_channels": 16, "num_filters": 16, "num_interactions": 2, "num_gaussians": 10, "cutoff": 4.0}
    mf = mfwrap.MultiFidelity(PositionsModel.wrap(net, model_kwargs=kwargs), ["dft", "ccsd"], "ECMR", spec=SPEC)
    assert mf.surgery.symmetry.startswith("symmetry checked") and [mf.surgery.count(m) for m in "ECMR"][::2] == [1, 10]
    structures = _molecules()
    bare = mfwrap.predict(PositionsModel.wrap(net), structures)
    for fidelity in ("dft", "ccsd"):
        for a, b in zip(mfwrap.predict(mf, structures, fidelity=fidelity), bare):
            assert a["energy"] == pytest.approx(b["energy"], abs=1e-5)
    mf.save(tmp_path / "mf.pt")
    again = mfwrap.load(tmp_path / "mf.pt")
    for a, b in zip(
        mfwrap.predict(again, structures, fidelity="ccsd"), mfwrap.predict(mf, structures, fidelity="ccsd")
    ):
        assert a["energy"] == pytest.approx(b["energy"], abs=1e-6)
    with pytest.raises(TypeError, match="cannot be rebuilt"):
        mfwrap.MultiFidelity(PositionsModel.wrap(net), ["dft", "ccsd"], "R", spec=SPEC).save(tmp_path / "no.pt")


def test_a_model_without_a_cutoff_needs_one():
    with pytest.raises(ValueError, match="pass cutoff="):
        PositionsModel.wrap(torch.nn.Linear(3, 1))


def test_adapt_takes_a_z_pos_batch_model_and_still_refuses_other_modules():
    from backbones.pyg import adapt

    class Pairwise(torch.nn.Module):
        """E_b = Σ_{i<j in b} exp(-|r_i - r_j|) (eV), all pairs within 3 Å."""

        cutoff = 3.0

        def forward(self, z, pos, batch):
            d = torch.cdist(pos, pos)
            pairs = (batch[:, None] == batch[None, :]) & (d < 3.0) & ~torch.eye(len(pos), dtype=torch.bool)
            per_atom = 0.5 * (torch.exp(-d) * pairs).sum(1)
            return torch.zeros(int(batch.max()) + 1).index_add(0, batch, per_atom)

    adapted = adapt(Pairwise())
    assert isinstance(adapted, PositionsModel) and adapted.graph_spec.cutoff == 3.0
    water = _molecules()[1]
    d = np.linalg.norm(water.positions[:, None] - water.positions[None], axis=-1)
    expected = float(np.exp(-d[np.triu_indices(3, 1)]).sum())
    assert mfwrap.predict(adapted, [water])[0]["energy"] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(TypeError, match="cannot adapt a Linear"):
        adapt(torch.nn.Linear(3, 1))
