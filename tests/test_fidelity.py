"""Fidelity names to indices, the check of a batch's indices, per-row fidelity and the context."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mf_models import batch_of, random_crystal, small_backbone
from mfwrap import MultiFidelity
from mfwrap.data import keys as K
from mfwrap.data.graph import GraphSpec
from mfwrap.fidelity import (
    DEFAULT_FIDELITY,
    ROW_KINDS,
    FidelityContext,
    check_batch_fidelities,
    fidelity_names_of,
    fidelity_rows,
    is_multi_fidelity,
    resolve_fidelity,
    validate_fidelity_names,
)


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
        assert torch.equal(
            context.rows("edge", batch[K.EDGE_INDEX].shape[1], "layer"),
            torch.ones(batch[K.EDGE_INDEX].shape[1], dtype=torch.long),
        )
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


def test_a_name_is_required_only_among_several_fidelities_without_a_default():
    assert resolve_fidelity(("a", "b"), "b") == 1 and resolve_fidelity(["only"], None) == 0
    assert resolve_fidelity(("a", "b"), None, default="b") == 1  # the fidelity a file stores as its model's
    with pytest.raises(ValueError, match=r"this model has 2 fidelities \['a', 'b'\]: choose one with fidelity=$"):
        resolve_fidelity(("a", "b"), None)
    with pytest.raises(ValueError, match=r"unknown fidelity 'c' \(known: \['a', 'b'\]\); choose one with --fidelity$"):
        resolve_fidelity(("a", "b"), "c", option="--fidelity")


def test_a_model_without_fidelity_names_has_one_unnamed_fidelity():
    model = nn.Linear(1, 1)
    assert not is_multi_fidelity(model) and fidelity_names_of(model) == (DEFAULT_FIDELITY,)
    assert resolve_fidelity(model, None) == 0
    with pytest.raises(ValueError, match="'a' given, but Linear is a single-fidelity model: leave the fidelity out"):
        resolve_fidelity(model, "a")
    model.fidelity_names = ("x", "y")
    assert is_multi_fidelity(model) and fidelity_names_of(model) == ("x", "y") and resolve_fidelity(model, "y") == 1
    with pytest.raises(ValueError, match=r"2 fidelities \['x', 'y'\]: choose one"):
        resolve_fidelity(model, None)


def test_batch_fidelities_are_checked_against_the_fidelities():
    crystals = [random_crystal(np.random.default_rng(seed)) for seed in range(2)]
    spec = GraphSpec(4.0)
    assert check_batch_fidelities(batch_of(crystals, spec, [1, 1]), ["a", "b"]) == 1  # the shared fidelity
    assert check_batch_fidelities(batch_of(crystals, spec, [0, 1]), ["a", "b"]) is None
    assert check_batch_fidelities(batch_of(crystals, spec, [0, 1]), ["a", "b"], asynchronous=True) is None
    for bad in ([2, 0], [-1, 1]):
        batch = batch_of(crystals, spec, bad)
        with pytest.raises(
            ValueError,
            match=rf"batch fidelity indices \[{min(bad)}, {max(bad)}\] out of range for the "
            r"fidelities \['a', 'b'\]; build graphs with to_graph",
        ):
            check_batch_fidelities(batch, ["a", "b"])
        with pytest.raises(RuntimeError):  # on the CPU the queued assertion fails at once
            check_batch_fidelities(batch, ["a", "b"], asynchronous=True)
    del batch[K.FIDELITY]
    with pytest.raises(KeyError, match="no 'fidelity' .*build graphs with to_graph"):
        check_batch_fidelities(batch, ["a", "b"])


def test_the_model_rejects_a_bad_batch_with_the_checks_message():
    backbone = small_backbone("schnet")
    mf = MultiFidelity(backbone, ["a", "b"], "ECMR")
    batch = batch_of([random_crystal(np.random.default_rng(0))], backbone.graph_spec, [2])
    with pytest.raises(ValueError) as direct:
        check_batch_fidelities(batch, mf.fidelity_names)
    with pytest.raises(ValueError) as forward:
        mf(batch)
    assert str(forward.value) == str(direct.value)
    with pytest.raises(ValueError) as added:
        mf.add_fidelity("c", like="z")
    assert str(added.value) == "unknown fidelity 'z' (known: ['a', 'b']); choose one with fidelity="
