"""FidelityEmbedding: v_i^0 = X_{Z_i} + X_{f_i}, zero-initialised."""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.data import Data

from mfwrap.fidelity import FidelityContext
from mfwrap.mechanisms.embedding import FidelityEmbedding


def test_adds_the_vector_of_each_atoms_fidelity():
    torch.manual_seed(0)
    table = nn.Embedding(10, 4)
    context = FidelityContext(2)
    embedding = FidelityEmbedding(table, context, "atom", 4, name="emb")
    numbers = torch.tensor([1, 5, 5, 9])
    batch = Data(
        atomic_numbers=numbers,
        fidelity=torch.tensor([0, 1]),
        batch=torch.tensor([0, 0, 1, 1]),
        cell=torch.zeros(2, 3, 3),
        edge_index=torch.zeros(2, 0, dtype=torch.long),
    )
    with context.bound(batch):
        assert torch.equal(embedding(numbers), table(numbers))
        with torch.no_grad():
            embedding.fidelity_vectors.normal_()
        out = embedding(numbers)
    torch.testing.assert_close(out[:2], table(numbers[:2]) + embedding.fidelity_vectors[0])
    torch.testing.assert_close(out[2:], table(numbers[2:]) + embedding.fidelity_vectors[1])
    embedding.add_fidelity(0)
    assert torch.equal(embedding.fidelity_vectors[2], embedding.fidelity_vectors[0])
