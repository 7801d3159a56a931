"""PyG SchNet and DimeNet++ adapters: equal to PyG's own forward on molecules, periodic on crystals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch_geometric.nn.models.dimenet as pyg_dimenet
import torch_geometric.nn.models.schnet as pyg_schnet
from ase.build import molecule
from torch_geometric.data import Batch

from backbones.pyg import DimeNetPlusPlus, SchNet, reverse_edges
from mfwrap.data import keys as K
from mfwrap.data.graph import GraphSpec, to_graph
from mfwrap.datasets.structures import lifepo4
from mfwrap.physics import energy_and_derivatives


def brute_radius_graph(pos, r, batch=None, max_num_neighbors=None, **kwargs):
    """All pairs closer than r (PyG's radius_graph needs pyg-lib / torch-cluster)."""
    distance = torch.cdist(pos, pos)
    centre, neighbour = ((distance < r) & ~torch.eye(len(pos), dtype=torch.bool)).nonzero().t()
    return torch.stack([neighbour, centre])


def brute_triplets(edge_index, num_nodes):
    """PyG's dimenet.triplets without torch-sparse: all k → j → i with k ≠ i."""
    row, col = edge_index
    kj, ji = ((col[:, None] == row[None, :]) & (row[:, None] != col[None, :])).nonzero().t()
    return col, row, col[ji], row[ji], row[kj], kj, ji


@pytest.fixture
def pyg_without_extensions(monkeypatch):
    monkeypatch.setattr(pyg_schnet, "radius_graph", brute_radius_graph)
    monkeypatch.setattr(pyg_dimenet, "radius_graph", brute_radius_graph)
    monkeypatch.setattr(pyg_dimenet, "triplets", brute_triplets)


def _molecule_graph(spec):
    atoms = molecule("CH3CH2OH")
    atoms.cell, atoms.pbc = np.eye(3) * 30, True  # images far beyond the cutoff
    return to_graph(atoms, spec, dtype=torch.float32)


def test_schnet_equals_pyg_forward(pyg_without_extensions):
    torch.manual_seed(0)
    adapter = SchNet(
        hidden_channels=16,
        num_filters=16,
        num_interactions=2,
        num_gaussians=10,
        cutoff=4.0,
        atomref=torch.linspace(-3, 0, 100),
    )
    reference = pyg_schnet.SchNet(16, 16, 2, 10, 4.0, atomref=torch.zeros(100, 1))
    reference.embedding, reference.interactions = adapter.embedding, adapter.interactions
    reference.lin1, reference.lin2, reference.atomref = adapter.readout[0], adapter.readout[2], adapter.atomref
    graph = _molecule_graph(adapter.graph_spec)
    expected = reference(graph[K.ATOMIC_NUMBERS], graph[K.POSITIONS])
    torch.testing.assert_close(adapter(Batch.from_data_list([graph]))[K.ENERGY], expected.reshape(1))
    assert adapter.fidelity_spec["composition"] == "atomref"


def test_dimenet_equals_pyg_forward(pyg_without_extensions):
    torch.manual_seed(0)
    adapter = DimeNetPlusPlus(
        hidden_channels=16,
        num_blocks=2,
        int_emb_size=8,
        basis_emb_size=4,
        out_emb_channels=16,
        num_spherical=3,
        num_radial=4,
        cutoff=4.0,
        output_initializer="glorot_orthogonal",
    )
    reference = pyg_dimenet.DimeNetPlusPlus(16, 1, 2, 8, 4, 16, 3, 4, cutoff=4.0)
    reference.rbf, reference.sbf, reference.emb = adapter.rbf, adapter.sbf, adapter.emb
    reference.interaction_blocks = adapter.interaction_blocks
    for block, lin_rbf, head in zip(reference.output_blocks, adapter.output_rbf, adapter.output_heads):
        block.lin_rbf, block.lin_up, block.lins, block.lin = lin_rbf, head.lin_up, head.lins, head.lin
    graph = _molecule_graph(adapter.graph_spec)
    expected = reference(graph[K.ATOMIC_NUMBERS], graph[K.POSITIONS])
    torch.testing.assert_close(adapter(Batch.from_data_list([graph]))[K.ENERGY], expected.reshape(1))


@pytest.mark.parametrize(
    "make",
    [
        lambda: SchNet(hidden_channels=16, num_filters=16, num_interactions=2, num_gaussians=10, cutoff=4.5),
        lambda: DimeNetPlusPlus(
            hidden_channels=16,
            num_blocks=1,
            int_emb_size=8,
            basis_emb_size=4,
            out_emb_channels=16,
            num_spherical=3,
            num_radial=4,
            cutoff=3.5,
            output_initializer="glorot_orthogonal",
        ),
    ],
    ids=["schnet", "dimenet"],
)
def test_periodic_images_make_energy_extensive(make):
    torch.manual_seed(0)
    model = make()
    cell = lifepo4()
    graphs = [to_graph(s, model.graph_spec, dtype=torch.float64) for s in (cell, cell * (1, 2, 1))]
    out = energy_and_derivatives(model.double(), Batch.from_data_list(graphs))
    energy, forces = out[K.ENERGY].detach(), out[K.FORCES].detach()
    torch.testing.assert_close(energy[1], 2 * energy[0])
    torch.testing.assert_close(out[K.STRESS][1], out[K.STRESS][0])
    assert float(forces.abs().max()) > 1e-4 and float(forces.sum(0).abs().max()) < 1e-8


def test_reverse_edges_pairs_each_edge_with_its_opposite():
    graph = to_graph(lifepo4(), GraphSpec(4.0, 3.0))
    reverse = reverse_edges(graph)
    edge_index, shift = graph[K.EDGE_INDEX], graph[K.EDGE_SHIFT]
    assert torch.equal(reverse[reverse], torch.arange(len(reverse)))
    assert torch.equal(edge_index[:, reverse], edge_index.flip(0)) and torch.equal(shift[reverse], -shift)


def test_an_existing_pyg_schnet_is_adapted_with_its_weights(pyg_without_extensions, tmp_path):
    from ase import Atoms
    from torch_geometric.nn import models as pyg_models

    import mfwrap
    from backbones.pyg import adapt
    from mfwrap import MultiFidelity

    torch.manual_seed(3)
    net = pyg_models.SchNet(
        hidden_channels=16,
        num_filters=16,
        num_interactions=2,
        num_gaussians=10,
        cutoff=4.0,
        mean=-0.5,
        std=2.0,
        atomref=torch.linspace(-3, -1, 100).view(-1, 1),
    )
    molecule = Atoms([8, 1, 1, 6], positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0], [1.2, 1.4, 0.3]])
    own = float(net(torch.tensor(molecule.numbers), torch.tensor(molecule.positions, dtype=torch.float32)))
    backbone = adapt(net)
    assert backbone.embedding is net.embedding  # the same modules, not copies
    assert mfwrap.predict(backbone, molecule)[0]["energy"] == pytest.approx(own, rel=1e-5)
    mf = MultiFidelity(backbone, ["pbe", "r2scan"], "ECMR")  # identity at initialisation
    assert mfwrap.predict(mf, molecule, fidelity="r2scan")[0]["energy"] == pytest.approx(own, rel=1e-5)
    mf.save(tmp_path / "adapted.pt")  # rebuilt from the adapter's config, weights from the file
    assert mfwrap.predict(mfwrap.load(tmp_path / "adapted.pt"), molecule, fidelity="r2scan")[0][
        "energy"
    ] == pytest.approx(own, rel=1e-5)
    with pytest.raises(TypeError, match="cannot adapt a Linear"):
        adapt(torch.nn.Linear(2, 2))


def test_an_existing_pyg_dimenet_is_adapted_with_its_weights(pyg_without_extensions):
    from backbones.pyg import adapt

    torch.manual_seed(5)
    net = pyg_dimenet.DimeNetPlusPlus(
        16,
        1,
        2,
        8,
        4,
        16,
        3,
        4,
        cutoff=4.0,
        envelope_exponent=6,
        num_before_skip=2,
        num_after_skip=1,
        num_output_layers=2,
        output_initializer="glorot_orthogonal",
    )
    backbone = adapt(net)
    assert backbone.config["envelope_exponent"] == 6 and backbone.config["num_before_skip"] == 2
    assert backbone.config["num_output_layers"] == 2 and backbone.interaction_blocks is net.interaction_blocks
    graph = _molecule_graph(backbone.graph_spec)
    expected = net(graph[K.ATOMIC_NUMBERS], graph[K.POSITIONS])
    torch.testing.assert_close(backbone(Batch.from_data_list([graph]))[K.ENERGY], expected.reshape(1))
    rebuilt = DimeNetPlusPlus(**backbone.config)
    rebuilt.load_state_dict(backbone.state_dict())  # the config rebuilds the same architecture
