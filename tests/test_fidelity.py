"""Per-row fidelity of a batch and the context that hands it to inserted modules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mf_models import batch_of, random_crystal
from mfwrap.data import keys as K
from mfwrap.data.graph import GraphSpec
from mfwrap.fidelity import ROW_KINDS, FidelityContext, fidelity_rows, validate_fidelity_names


def test_every_row_gets_the_fidelity_of_its_structure():
    rng = np.random.default_rng(0)
    batch = batch_of([random_crystal(rng, 6) for _ in range(3)], GraphSpec(4.0, 3.0), [2, 0, 1])
    rows = fidelity_rows(batch, ROW_KINDS)
    atom_fidelity = batch[K.FIDELITY][batch.batch]
    assert torch.equal(rows["atom"], atom_fidelity)
    assert torch.equal(rows["edge"], atom_fidelity[batch[K.EDGE_INDEX][0]])  # neighbour's too
    undirected_of_edge = batch[K.EDGE_TO_UNDIRECTED]
    assert torch.equal(rows["undirected"][undirected_of_edge], rows["edge"])
    assert torch.equal(rows["angle"], rows["edge"][batch[K.ANGLE_EDGES][1]])
    assert len(set(rows["angle"].tolist())) >= 2
    assert torch.equal(rows["structure"], torch.tensor([2, 0, 1]))


def test_context_is_empty_outside_a_forward_and_checks_row_counts():
    batch = batch_of([random_crystal(np.random.default_rng(1))], GraphSpec(4.0), [1])
    context = FidelityContext(2)
    context.kinds = {"edge"}
    with pytest.raises(RuntimeError, match="outside MultiFidelity.forward"):
        context.rows("atom", 3, "layer")
    with context.bound(batch):
        assert torch.equal(context.rows("edge", batch[K.EDGE_INDEX].shape[1], "layer"), torch.ones(batch[K.EDGE_INDEX].shape[1], dtype=torch.long))
        with pytest.raises(RuntimeError, match="'layer'.*one row per atom"):
            context.rows("atom", 999, "layer")
        order, counts = context.groups("atom", batch.num_nodes, "readout")
        assert counts == [0, batch.num_nodes]
    with pytest.raises(RuntimeError):
        context.rows("edge", 1, "layer")


def test_a_failed_bind_leaves_no_stale_batch():
    batch = batch_of([random_crystal(np.random.default_rng(1))], GraphSpec(4.0), [1])
    context = FidelityContext(2)
    context.kinds = {"angle"}  # the batch has no bond graph: computing angle rows fails
    with pytest.raises(KeyError):
        with context.bound(batch, uniform=1):
            pass
    assert context.uniform is None
    with pytest.raises(RuntimeError, match="outside MultiFidelity.forward"):
        context.rows("atom", batch.num_nodes, "layer")


@pytest.mark.parametrize("names", [[], ["a", "a"], ["a", ""], "ab", [1]])
def test_bad_fidelity_names(names):
    with pytest.raises((TypeError, ValueError)):
        validate_fidelity_names(names)
