"""TrainConfig: seed-paper defaults, YAML round trip, clear errors."""

import pytest

from mfwrap.train import LossWeights, TrainConfig


def test_defaults_are_the_seed_papers():
    config = TrainConfig()
    assert (config.batch_size, config.epochs, config.lr, config.scheduler, config.huber_delta) == (
        4,
        60,
        0.005,
        "cos",
        0.1,
    )
    assert config.loss_weights == LossWeights(1.0, 1.0, 0.1, 0.1) and config.targets == "efsm"


def test_yaml_round_trip_and_unknown_keys(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(
        "epochs: 3\nloss_weights: {energy: 2, forces: 1, stress: 0, magmoms: 0}\nfreeze: [atom_embedding]\n"
    )
    config = TrainConfig.from_yaml(path)
    assert config.epochs == 3 and config.loss_weights.energy == 2 and config.freeze == ["atom_embedding"]
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"train: unknown key\(s\) \['epoch'\]; known are"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="targets"):
        TrainConfig(targets="efx")
