"""AtomicGraph: batching offsets, edge vectors, labels and masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

from mfwrap.data import GraphSpec, StructureError, edge_vectors, to_graph
from mfwrap.data import keys as K
from mfwrap.data.graph import attach_labels
from mfwrap.datasets.structures import lifepo4

SPEC = GraphSpec(5.0, 3.0)


def _structures():
    si = bulk("Si", "diamond", a=5.43)
    si.rattle(0.05, seed=1)
    water = molecule("H2O")
    water.center(vacuum=3.0)
    return [si, lifepo4(), water, bulk("NaCl", "rocksalt", a=5.64)]


def _graphs(dtype=torch.float64):
    rng = np.random.default_rng(0)
    graphs = []
    for i, s in enumerate(_structures()):
        n = len(s)
        labels = {"energy": -float(n), "forces": rng.normal(size=(n, 3))}
        if i % 2:
            labels["stress"] = rng.normal(size=(3, 3))
            labels["magmoms"] = rng.uniform(size=n)
        graphs.append(to_graph(s, SPEC, fidelity=i % 2, labels=labels, name=f"s{i}", dtype=dtype))
    return graphs


def _angle_cosines(graph) -> torch.Tensor:
    vec = edge_vectors(graph)
    a, b = graph[K.ANGLE_EDGES]
    return torch.nn.functional.cosine_similarity(vec[a], vec[b], dim=-1)


def test_batch_offsets_index_tensors():
    graphs = _graphs()
    batch = Batch.from_data_list(graphs)
    nodes = np.cumsum([0] + [g.num_nodes for g in graphs])
    edges = np.cumsum([0] + [g[K.EDGE_INDEX].shape[1] for g in graphs])
    undirected = np.cumsum([0] + [g[K.NUM_UNDIRECTED] for g in graphs])
    assert torch.equal(batch[K.EDGE_INDEX], torch.cat([g[K.EDGE_INDEX] + int(o) for g, o in zip(graphs, nodes)], 1))
    assert torch.equal(batch[K.ANGLE_EDGES], torch.cat([g[K.ANGLE_EDGES] + int(o) for g, o in zip(graphs, edges)], 1))
    assert torch.equal(
        batch[K.UNDIRECTED_TO_EDGE], torch.cat([g[K.UNDIRECTED_TO_EDGE] + int(o) for g, o in zip(graphs, edges)])
    )
    assert torch.equal(
        batch[K.EDGE_TO_UNDIRECTED], torch.cat([g[K.EDGE_TO_UNDIRECTED] + int(o) for g, o in zip(graphs, undirected)])
    )
    assert batch[K.NUM_UNDIRECTED].sum() == undirected[-1]
    # the batched pairing is still consistent: representative of each undirected edge maps back
    assert torch.equal(batch[K.EDGE_TO_UNDIRECTED][batch[K.UNDIRECTED_TO_EDGE]], torch.arange(int(undirected[-1])))
    assert batch[K.CELL].shape == (4, 3, 3) and batch[K.PBC].shape == (4, 3)
    assert batch[K.FIDELITY].tolist() == [0, 1, 0, 1]


def test_batched_computations_equal_per_graph():
    graphs = _graphs()
    batch = Batch.from_data_list(graphs)
    assert torch.allclose(edge_vectors(batch), torch.cat([edge_vectors(g) for g in graphs]), atol=1e-12)
    assert torch.allclose(_angle_cosines(batch), torch.cat([_angle_cosines(g) for g in graphs]), atol=1e-12)
    loader = DataLoader(graphs, batch_size=2, shuffle=False)
    assert sum(b.num_graphs for b in loader) == 4
    second = next(iter(DataLoader(graphs[2:], batch_size=2)))
    assert torch.allclose(_angle_cosines(second), torch.cat([_angle_cosines(g) for g in graphs[2:]]), atol=1e-12)


def test_edge_vectors_match_geometry_and_cutoff():
    atoms = _structures()[0]
    graph = to_graph(atoms, SPEC, dtype=torch.float64)
    vec = edge_vectors(graph)
    neighbour, centre = graph[K.EDGE_INDEX].numpy()
    expected = atoms.positions[neighbour] + graph[K.EDGE_SHIFT].numpy() @ atoms.cell.array - atoms.positions[centre]
    np.testing.assert_allclose(vec.numpy(), expected, atol=1e-12)
    assert (vec.norm(dim=1) < SPEC.cutoff).all()
    angle_lengths = vec.norm(dim=1)[graph[K.ANGLE_EDGES]]
    assert (angle_lengths < SPEC.line_graph_cutoff).all()


def test_edge_vectors_differentiable_in_positions_and_cell():
    graph = to_graph(bulk("Cu", "fcc", a=3.6), GraphSpec(3.0), dtype=torch.float64)
    pos = graph[K.POSITIONS].clone().requires_grad_(True)
    cell = graph[K.CELL].clone().requires_grad_(True)

    def f(p, c):
        g = graph.clone()
        g[K.POSITIONS], g[K.CELL] = p, c
        return edge_vectors(g)

    assert torch.autograd.gradcheck(f, (pos, cell))


def test_labels_and_masks():
    graphs = _graphs(torch.float32)
    g0, g1 = graphs[0], graphs[1]
    assert g0[K.ENERGY].dtype == torch.float32 and g0[K.ENERGY].shape == (1,)
    assert g0[K.mask_key(K.ENERGY)].all() and g0[K.mask_key(K.FORCES)].all()
    assert not g0[K.mask_key(K.STRESS)].any() and not g0[K.mask_key(K.MAGMOMS)].any()
    assert g1[K.mask_key(K.STRESS)].all() and g1[K.STRESS].shape == (1, 3, 3)
    batch = Batch.from_data_list(graphs)
    assert batch[K.ENERGY].shape == (4,) and batch[K.STRESS].shape == (4, 3, 3)
    assert batch[K.mask_key(K.STRESS)].tolist() == [False, True, False, True]
    assert batch[K.mask_key(K.MAGMOMS)].sum() == g1.num_nodes + graphs[3].num_nodes
    assert batch[K.FORCES].shape == (batch.num_nodes, 3)


@pytest.mark.parametrize(
    "labels, message",
    [
        ({"energy": [1.0, 2.0]}, r"'energy' has shape \(2,\), expected a scalar"),
        ({"forces": np.zeros((2, 2))}, r"'forces' has shape \(2, 2\), expected \(2, 3\) for 2 atoms"),
        ({"forces": np.zeros(6)}, r"'forces' has shape \(6,\), expected \(2, 3\)"),
        ({"stress": np.zeros(6)}, r"'stress' has shape \(6,\), expected \(3, 3\)"),
        ({"magmoms": np.zeros((2, 3))}, r"'magmoms' has shape \(2, 3\), expected \(2,\)"),
        ({"magmoms": [1.0, np.nan]}, "'magmoms' has non-finite values"),
        ({"energies": 1.0}, r"unknown label\(s\) \['energies'\]"),
    ],
)
def test_wrong_labels_are_named_errors(labels, message):
    graph = to_graph(bulk("NaCl", "rocksalt", a=5.64), GraphSpec(5.0))
    with pytest.raises(StructureError, match="^my frame: .*" + message):
        attach_labels(graph, labels, "my frame")
