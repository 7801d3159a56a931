"""Masked Huber loss: matches a hand computation, ignores absent labels, never produces NaN."""

import torch
from tiny_backbone import TinyBackbone, labelled_graphs
from torch.nn import functional as F
from torch_geometric.data import Batch

from mfwrap.data import keys as K
from mfwrap.physics import energy_and_derivatives
from mfwrap.train.loss import LossWeights, MultiTargetLoss, label_counts


def _batch(model, seed=0):
    graphs = labelled_graphs(3, seed, 0, model.graph_spec) + labelled_graphs(
        2, seed + 1, 1, model.graph_spec, magmoms=False
    )
    return Batch.from_data_list(graphs)


def test_matches_hand_computed_masked_means():
    model = TinyBackbone(seed=0)
    batch = _batch(model)
    batch[K.mask_key(K.STRESS)][1] = False  # one structure without stress
    batch[K.mask_key(K.FORCES)][:2] = False  # two atoms without forces
    pred = energy_and_derivatives(model, batch, create_graph=True)
    weights = LossWeights(1.0, 2.0, 0.5, 0.25)
    total, terms = MultiTargetLoss("efsm", weights, delta=0.1)(pred, batch)

    n = torch.bincount(batch.batch).float()
    expected = {
        K.ENERGY: F.huber_loss(pred[K.ENERGY] / n, batch[K.ENERGY] / n, delta=0.1),
        K.FORCES: F.huber_loss(pred[K.FORCES][2:], batch[K.FORCES][2:], delta=0.1),
        K.STRESS: F.huber_loss(pred[K.STRESS][[0, 2, 3, 4]], batch[K.STRESS][[0, 2, 3, 4]], delta=0.1),
        K.MAGMOMS: F.huber_loss(pred[K.MAGMOMS][:12], batch[K.MAGMOMS][:12], delta=0.1),  # first 3 structures
    }
    for target, value in expected.items():
        assert torch.allclose(terms[target], value, rtol=1e-5), target
    assert torch.allclose(total, sum(getattr(weights, t) * v for t, v in expected.items()), rtol=1e-5)


def test_absent_labels_contribute_zero_and_nan_predictions_do_not_leak():
    model = TinyBackbone(seed=0)
    batch = _batch(model)
    batch[K.mask_key(K.MAGMOMS)][:] = False
    batch[K.mask_key(K.STRESS)][0] = False
    pred = energy_and_derivatives(model, batch, create_graph=True)
    pred[K.STRESS] = torch.where(
        torch.arange(5).view(-1, 1, 1) == 0, torch.full_like(pred[K.STRESS], float("nan")), pred[K.STRESS]
    )
    pred[K.MAGMOMS] = pred[K.MAGMOMS] * float("nan")
    total, terms = MultiTargetLoss("efsm")(pred, batch)
    assert terms[K.MAGMOMS].item() == 0.0
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_global_counts_make_process_losses_sum_to_the_full_loss():
    model = TinyBackbone(seed=0)
    batch = _batch(model)
    batch[K.mask_key(K.FORCES)][:5] = False
    graphs = batch.to_data_list()
    loss_fn = MultiTargetLoss("efsm")
    full, _ = loss_fn(energy_and_derivatives(model, batch), batch)
    parts = [Batch.from_data_list(graphs[:2]), Batch.from_data_list(graphs[2:])]
    counts = label_counts(batch, loss_fn.targets)
    shares = [loss_fn(energy_and_derivatives(model, part), part, counts, scale=2.0)[0] for part in parts]
    assert torch.allclose(sum(shares) / 2, full, rtol=1e-5)


def test_model_without_magmoms_is_an_error_only_when_labels_exist():
    model = TinyBackbone(seed=0)
    batch = _batch(model)
    pred = energy_and_derivatives(model, batch)
    del pred[K.MAGMOMS]
    try:
        MultiTargetLoss("efsm")(pred, batch)
    except KeyError as error:
        assert "magmoms" in str(error)
    else:
        raise AssertionError("expected KeyError")
    batch[K.mask_key(K.MAGMOMS)][:] = False
    total, terms = MultiTargetLoss("efsm")(pred, batch)
    assert terms[K.MAGMOMS].item() == 0.0 and torch.isfinite(total)


def test_fidelity_weights_scale_each_structures_entries():
    """3 structures at fidelity 0 (weight 1), 2 at fidelity 1 (weight 3); normalised by label counts as before."""
    model = TinyBackbone(seed=0)
    batch = _batch(model)
    pred = energy_and_derivatives(model, batch)
    _, plain = MultiTargetLoss("efs", delta=0.1)(pred, batch)
    _, weighted = MultiTargetLoss("efs", delta=0.1, fidelity_weights=[1.0, 3.0])(pred, batch)
    n = torch.bincount(batch.batch).float()
    structure_weight = torch.tensor([1.0, 1.0, 1.0, 3.0, 3.0])
    energy = F.huber_loss(pred[K.ENERGY] / n, batch[K.ENERGY] / n, delta=0.1, reduction="none")
    forces = F.huber_loss(pred[K.FORCES], batch[K.FORCES], delta=0.1, reduction="none")
    assert torch.allclose(weighted[K.ENERGY], (energy * structure_weight).sum() / 5, rtol=1e-5)
    assert torch.allclose(
        weighted[K.FORCES], (forces * structure_weight[batch.batch].view(-1, 1)).sum() / forces.numel(), rtol=1e-5
    )
    assert not torch.allclose(weighted[K.STRESS], plain[K.STRESS])
    assert torch.allclose(
        MultiTargetLoss("efs", delta=0.1, fidelity_weights=[1.0, 1.0])(pred, batch)[0],
        MultiTargetLoss("efs", delta=0.1)(pred, batch)[0],
    )


def test_trainer_takes_fidelity_loss_weights_by_name(tmp_path):
    import pytest

    from mfwrap.train import TrainConfig, Trainer

    config = TrainConfig(fidelity_loss_weights={"high": 4.0}, output_dir=str(tmp_path))
    trainer = Trainer(TinyBackbone(seed=0), config, fidelity_names=["low", "high"])
    assert trainer.criterion.fidelity_weights.tolist() == [1.0, 4.0]
    with pytest.raises(ValueError, match=r"fidelity_loss_weights name \['hgh'\]"):
        Trainer(TinyBackbone(seed=0), TrainConfig(fidelity_loss_weights={"hgh": 4.0}), fidelity_names=["low", "high"])
