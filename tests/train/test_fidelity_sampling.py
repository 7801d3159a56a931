"""TrainConfig.fidelity_sampling: each fidelity's share of an epoch's draws, deterministic and resumable."""

import math

import pytest
import torch
from tiny_backbone import TinyBackbone, labelled_graphs

from mfwrap.train import TrainConfig, Trainer

SPEC = TinyBackbone().graph_spec
LOW, HIGH = labelled_graphs(30, 0, 0, SPEC), labelled_graphs(6, 1, 1, SPEC)
NAMES = ["low", "high"]


def _trainer(tmp_path, **options):
    values = {
        "epochs": 2,
        "batch_size": 4,
        "output_dir": str(tmp_path),
        "progress": False,
        "seed": 5,
        "val_fraction": 0.0,
    }
    return Trainer(TinyBackbone(seed=0), TrainConfig(**{**values, **options}), fidelity_names=NAMES)


def _epoch(trainer, fidelity, epoch):
    trainer._train_fidelity = fidelity
    return torch.cat(trainer._batches_of_epoch(len(fidelity), epoch))


def test_an_epoch_draws_each_fidelity_in_its_share_and_keeps_its_length(tmp_path):
    fidelity = torch.tensor([0] * 30 + [1] * 6)
    trainer = _trainer(tmp_path, fidelity_sampling={"low": 1.0, "high": 1.0})
    order = _epoch(trainer, fidelity, 0)
    assert len(order) == 36  # the epoch's length, hence the steps, is unchanged
    drawn_high, drawn_low = order[fidelity[order] == 1], order[fidelity[order] == 0]
    assert len(drawn_high) == len(drawn_low) == 18
    assert torch.bincount(drawn_high, minlength=36)[30:].tolist() == [3] * 6  # whole cycles: each high frame 3 times
    assert len(drawn_low.unique()) == 18  # a prefix of one permutation: no low frame twice
    assert torch.equal(order, _epoch(trainer, fidelity, 0))  # deterministic
    assert not torch.equal(order, _epoch(trainer, fidelity, 1))  # a new order every epoch
    positions = (fidelity[order] == 1).nonzero().flatten().float()
    assert positions.min() < 9 and positions.max() > 27  # shuffled, not high frames in a block


def test_shares_are_normalised_and_rounded_to_the_epoch_length(tmp_path):
    fidelity = torch.tensor([0] * 10 + [1] * 3)
    order = _epoch(_trainer(tmp_path, fidelity_sampling={"low": 2.0, "high": 1.0}), fidelity, 0)
    assert len(order) == 13 and int((fidelity[order] == 1).sum()) == round(13 / 3)


def test_without_sampling_every_structure_is_drawn_once(tmp_path):
    fidelity = torch.tensor([0] * 30 + [1] * 6)
    assert sorted(_epoch(_trainer(tmp_path), fidelity, 0).tolist()) == list(range(36))


def test_bad_sampling_options_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"fidelity_sampling must be finite and positive, got \{'high': 0\.0\}"):
        TrainConfig(fidelity_sampling={"low": 1.0, "high": 0.0})
    with pytest.raises(ValueError, match=r"fidelity_sampling name \['hgh'\]"):
        _trainer(tmp_path, fidelity_sampling={"low": 1.0, "hgh": 1.0})
    with pytest.raises(ValueError, match=r"no share for \['high'\]"):
        _trainer(tmp_path, fidelity_sampling={"low": 1.0}).fit(LOW + HIGH)


def test_sampled_training_takes_the_usual_steps_and_resumes_exactly(tmp_path):
    options = {"fidelity_sampling": {"low": 1.0, "high": 1.0}}
    full_model = TinyBackbone(seed=0)
    full = Trainer(full_model, _trainer(tmp_path / "full", **options).config, fidelity_names=NAMES).fit(
        LOW + HIGH, test=HIGH
    )
    assert full["steps"] == 2 * math.ceil(36 / 4)
    _trainer(tmp_path / "part", **options).fit(LOW + HIGH, stop_after_steps=5)
    resumed_model = TinyBackbone(seed=7)
    resumed = Trainer(resumed_model, _trainer(tmp_path / "part", **options).config, fidelity_names=NAMES).fit(
        LOW + HIGH, test=HIGH, resume=True
    )
    assert resumed["test"] == full["test"]
    for key, value in full_model.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[key]), key
