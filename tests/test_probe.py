"""The probe structures and the record of layer outputs that surgery and the symmetry checks share."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch_geometric.data import Batch

from mf_models import small_backbone
from mfwrap.data import keys as K
from mfwrap.data.graph import GraphSpec, to_graph
from mfwrap.fidelity import row_counts
from mfwrap.probe import DEFAULT_PROBE_ELEMENTS, layer_outputs, probe_batch, probe_structures


@pytest.mark.parametrize("spec", [GraphSpec(6.0, 3.0), GraphSpec(4.0), GraphSpec(10.0, 10.0)])
def test_probe_row_counts_all_differ(spec):
    counts = row_counts(Batch.from_data_list([to_graph(s, spec) for s in probe_structures(spec)]))
    bonds = {"undirected": 9, "angle": 30} if spec.line_graph_cutoff else {}
    expected = {"atom": 7, "edge": 18, "structure": 2, **bonds}
    assert counts == expected


def test_probe_structures_are_distorted_and_made_of_the_given_elements():
    spec = GraphSpec(5.0)
    triangle, tetrahedron = probe_structures(spec, (1, 6, 7, 8))
    assert list(triangle.numbers) == [1, 6, 7] and list(tetrahedron.numbers) == [8, 1, 1, 6]
    distances = tetrahedron.get_all_distances()[np.triu_indices(4, 1)]
    assert np.all(np.abs(distances - 2.5) < 1.0) and np.ptp(distances) > 1e-3  # bonds ≈ d = cutoff / 2, none equal
    again = probe_structures(spec, (1, 6, 7, 8))
    assert np.array_equal(again[1].positions, tetrahedron.positions)  # seeded
    assert not np.array_equal(probe_structures(spec, (1, 6, 7, 8), seed=1)[1].positions, tetrahedron.positions)
    assert list(probe_structures(spec)[0].numbers) == list(DEFAULT_PROBE_ELEMENTS[:3])


class _Pair(nn.Module):
    def forward(self, x):
        return x, x


class _TwoCalls(nn.Module):
    """Calls ``layer`` on atom rows and then on structure rows, and ``tuple_out`` (not a tensor output)."""

    def __init__(self) -> None:
        super().__init__()
        self.graph_spec = GraphSpec(4.0)
        self.layer = nn.Linear(1, 3)
        self.tuple_out = _Pair()

    def forward(self, batch):
        atoms = self.layer(batch[K.ATOMIC_NUMBERS].to(self.layer.weight.dtype).unsqueeze(-1))
        structures = self.layer(torch.zeros(batch[K.CELL].shape[0], 1))
        self.tuple_out(atoms)
        return {K.ENERGY: structures.sum(-1)}


def test_layer_outputs_records_every_call_and_leaves_the_model_as_it_was():
    model = _TwoCalls().train()
    batch = probe_batch(model)
    out, outputs = layer_outputs(model, ["layer", "tuple_out"], batch)
    assert [o.shape for o in outputs["layer"]] == [(7, 3), (2, 3)] and outputs["tuple_out"] == [None]
    assert not out[K.ENERGY].requires_grad and not outputs["layer"][0].requires_grad
    assert model.training and not model.layer._forward_hooks and not model.tuple_out._forward_hooks


def test_probe_batch_is_in_the_models_dtype_and_elements():
    backbone = small_backbone("schnet").double()
    batch = probe_batch(backbone)
    assert batch[K.POSITIONS].dtype == torch.float64 and row_counts(batch)["atom"] == 7
    backbone.supported_numbers = [1, 6]
    assert sorted(set(probe_batch(backbone)[K.ATOMIC_NUMBERS].tolist())) == [1, 6]
