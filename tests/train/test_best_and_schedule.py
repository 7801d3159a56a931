"""Trainer: which epoch is "best" (``best_metric``, ``target_fidelity``) and the learning rate of
every step (``scheduler``: cosine with a floor, constant, or reduced on a validation plateau)."""

import json
import math

import pytest
from tiny_backbone import TinyBackbone, labelled_graphs

from mfwrap.model_file import read_payload
from mfwrap.train import TrainConfig, Trainer
from mfwrap.train.loss import LossWeights

SPEC = TinyBackbone().graph_spec
TRAIN = labelled_graphs(12, 0, 0, SPEC) + labelled_graphs(8, 2, 1, SPEC)  # 5 batches of 4
VAL = labelled_graphs(6, 1, 0, SPEC) + labelled_graphs(6, 3, 1, SPEC)
NAMES = ["low", "high"]
# A constant, large learning rate: validation errors go up and down, and different metrics and
# fidelities have their minimum at different epochs.
BUMPY = {"epochs": 4, "batch_size": 4, "lr": 0.02, "scheduler": "constant", "progress": False, "seed": 3}


def _fit(tmp_path, **overrides):
    config = TrainConfig(**{**BUMPY, "output_dir": str(tmp_path), **overrides})
    trainer = Trainer(TinyBackbone(seed=0), config, fidelity_names=NAMES)
    return trainer, trainer.fit(TRAIN, VAL)


def _logged(tmp_path, fidelity, target, kind):
    """The validation ``kind`` ("mae"/"rmse") of ``target`` at ``fidelity``, per epoch, from metrics.json."""
    history = json.loads((tmp_path / "metrics.json").read_text())["history"]
    rows = sorted(
        (row["epoch"], row[kind])
        for row in history
        if row["split"] == "val" and row["fidelity"] == fidelity and row["target"] == target
    )
    assert [epoch for epoch, _ in rows] == list(range(BUMPY["epochs"]))
    return [value for _, value in rows]


def _weighted_mae(tmp_path, fidelity):
    """Σ_t w_t MAE_t with MAE in eV/atom, eV/Å, GPa, μB (the logs are in meV for energy and forces)."""
    weights, scale = LossWeights(), {"energy": 1e-3, "forces": 1e-3, "stress": 1.0, "magmoms": 1.0}
    per_target = {t: _logged(tmp_path, fidelity, t, "mae") for t in scale}
    return [sum(getattr(weights, t) * scale[t] * per_target[t][e] for t in scale) for e in range(BUMPY["epochs"])]


def _argmin(values):
    return min(range(len(values)), key=values.__getitem__)


def _assert_best_is(trainer, result, tmp_path, epoch, value):
    assert result["best"]["epoch"] == epoch and result["best"]["value"] == pytest.approx(value, rel=1e-12)
    assert read_payload(tmp_path / "best.pt")["epoch"] == epoch
    # the model ends with the best epoch's weights: its validation errors are those logged then
    assert trainer.evaluate(VAL) == result["val"]
    assert result["val"]["high"]["forces"]["mae"] == pytest.approx(
        _logged(tmp_path, "high", "forces", "mae")[epoch], rel=1e-12
    )


METRICS = ["weighted_mae", "energy_mae", "energy_rmse", "forces_mae", "forces_rmse", "stress_mae", "magmoms_rmse"]


def test_best_epoch_is_the_argmin_of_the_logged_validation_metric(tmp_path):
    chosen = {}
    for metric in METRICS:
        trainer, result = _fit(tmp_path / metric, best_metric=metric)
        if metric == "weighted_mae":
            values = _weighted_mae(tmp_path / metric, "high")
        else:
            target, kind = metric.split("_")
            values = _logged(tmp_path / metric, "high", target, kind)
        chosen[metric] = _argmin(values)
        _assert_best_is(trainer, result, tmp_path / metric, chosen[metric], values[chosen[metric]])
    # the data make the choice matter: the metrics disagree, and most minima are not at the last epoch
    assert len(set(chosen.values())) >= 3, chosen
    assert sum(epoch < BUMPY["epochs"] - 1 for epoch in chosen.values()) >= 3, chosen


def test_unknown_best_metric_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="best_metric 'energy_max' not available"):
        _fit(tmp_path, best_metric="energy_max", epochs=1)


def test_best_epoch_is_chosen_on_the_target_fidelity(tmp_path):
    chosen = {}
    for target_fidelity in (None, "low", "high"):
        out = tmp_path / str(target_fidelity)
        trainer, result = _fit(out, best_metric="forces_mae", target_fidelity=target_fidelity)
        values = _logged(out, target_fidelity or "high", "forces", "mae")  # default: the last fidelity
        chosen[target_fidelity] = _argmin(values)
        _assert_best_is(trainer, result, out, chosen[target_fidelity], values[chosen[target_fidelity]])
        assert read_payload(out / "best.pt")["target_fidelity"] == (target_fidelity or "high")
    assert chosen["low"] != chosen["high"], chosen  # the two fidelities disagree on these data


def test_target_fidelity_must_be_known_and_have_validation_labels(tmp_path):
    with pytest.raises(ValueError, match=r"target_fidelity 'pbe' not among \['low', 'high'\]"):
        Trainer(
            TinyBackbone(seed=0),
            TrainConfig(**BUMPY, output_dir=str(tmp_path), target_fidelity="pbe"),
            fidelity_names=NAMES,
        )
    trainer = Trainer(
        TinyBackbone(seed=0),
        TrainConfig(**{**BUMPY, "epochs": 1}, output_dir=str(tmp_path), target_fidelity="low"),
        fidelity_names=NAMES,
    )
    with pytest.raises(ValueError, match="no validation labels at the target fidelity 'low'"):
        trainer.fit(TRAIN, VAL[6:])  # validation structures of "high" only


class _RecordingLearningRate(Trainer):
    """Records the learning rate each optimiser step uses."""

    def train_step(self, graphs, indices):
        self.used_lr = getattr(self, "used_lr", []) + [[group["lr"] for group in self.optimizer.param_groups]]
        return super().train_step(graphs, indices)


@pytest.mark.parametrize("scheduler", ["cos", "constant"])
def test_learning_rate_of_every_step(tmp_path, scheduler):
    """cos: lr · (f + (1 − f) · ½ (1 + cos(π s / S))) at step s of S, from lr down to lr · f at the end."""
    lr, floor, epochs, steps_per_epoch = 0.004, 0.1, 3, 5
    config = TrainConfig(
        epochs=epochs,
        batch_size=4,
        lr=lr,
        lr_min_fraction=floor,
        scheduler=scheduler,
        output_dir=str(tmp_path),
        progress=False,
        seed=3,
        val_fraction=0.0,
    )
    trainer = _RecordingLearningRate(TinyBackbone(seed=0), config, fidelity_names=NAMES)
    trainer.fit(TRAIN)
    total = epochs * steps_per_epoch

    def expected(step):
        if scheduler == "constant":
            return lr
        return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * step / total)))

    assert len(trainer.used_lr) == total
    for step, used in enumerate(trainer.used_lr):
        assert used == [pytest.approx(expected(step), rel=1e-12, abs=0)], step
    # the log holds the learning rate after each epoch's last step (the next one's)
    history = json.loads((tmp_path / "metrics.json").read_text())["history"]
    logged = [row["mae"] for row in history if row["target"] == "lr"]
    assert logged == pytest.approx([expected((e + 1) * steps_per_epoch) for e in range(epochs)], rel=1e-12, abs=0)
    if scheduler == "cos":
        assert logged[-1] == pytest.approx(lr * floor, rel=1e-12)


@pytest.mark.parametrize("patience", [1, 2])
def test_patience_stops_when_validation_stops_improving(tmp_path, patience):
    trainer, result = _fit(tmp_path / "run", epochs=12, patience=patience, best_metric="forces_mae")
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    errors = [
        row["mae"]
        for row in sorted(history, key=lambda r: r["epoch"])
        if row["split"] == "val" and row["fidelity"] == "high" and row["target"] == "forces"
    ]
    # stopped after the first run of `patience` epochs without a new minimum (or at the end)
    best_so_far, stop = math.inf, len(errors)
    for epoch, error in enumerate(errors):
        if error < best_so_far:
            best_so_far, best_epoch = error, epoch
        elif epoch - best_epoch >= patience:
            stop = epoch + 1
            break
    assert len(errors) == stop == result["epochs_run"] < 12
    assert result["steps"] == stop * 5 and result["best"]["epoch"] == _argmin(errors)
    again = Trainer(
        TinyBackbone(seed=0),
        TrainConfig(
            **{
                **BUMPY,
                "output_dir": str(tmp_path / "run"),
                "epochs": 12,
                "patience": patience,
                "best_metric": "forces_mae",
            }
        ),
        fidelity_names=NAMES,
    ).fit(TRAIN, VAL, resume=True)
    assert again["epochs_run"] == stop  # resuming a stopped run trains no further


@pytest.mark.parametrize("plateau_patience", [1, 2])
def test_plateau_cuts_the_learning_rate_when_validation_stalls(tmp_path, plateau_patience):
    """plateau: lr · factor after ``plateau_patience`` epochs without a new minimum of the validation
    metric (counted since the minimum or the last cut), never below lr · lr_min_fraction."""
    lr, factor, floor, epochs, steps_per_epoch = 0.02, 0.5, 0.2, 10, 5
    config = TrainConfig(
        **{
            **BUMPY,
            "epochs": epochs,
            "lr": lr,
            "scheduler": "plateau",
            "plateau_patience": plateau_patience,
            "plateau_factor": factor,
            "lr_min_fraction": floor,
            "best_metric": "forces_mae",
            "output_dir": str(tmp_path),
        }
    )
    trainer = _RecordingLearningRate(TinyBackbone(seed=0), config, fidelity_names=NAMES)
    trainer.fit(TRAIN, VAL)
    history = json.loads((tmp_path / "metrics.json").read_text())["history"]
    errors = [
        row["mae"]
        for row in sorted(history, key=lambda r: r["epoch"])
        if row["split"] == "val" and row["fidelity"] == "high" and row["target"] == "forces"
    ]
    expected, current, best, bad = [], lr, math.inf, 0
    for error in errors:
        expected.append(current)  # the lr of every step of this epoch
        best, bad = (error, 0) if error < best else (best, bad + 1)
        if bad == plateau_patience:
            current, bad = max(current * factor, lr * floor), 0
    assert len(trainer.used_lr) == epochs * steps_per_epoch
    assert [used[0] for used in trainer.used_lr] == pytest.approx(
        [value for value in expected for _ in range(steps_per_epoch)], rel=1e-12, abs=0
    )
    assert len(set(expected)) >= 3  # this bumpy run stalls often enough to cut twice (the test could fail)
    logged = [row["mae"] for row in history if row["target"] == "lr"]
    assert logged == pytest.approx(expected[1:] + [current], rel=1e-12, abs=0)  # the lr after each epoch


def test_plateau_needs_validation_frames(tmp_path):
    config = TrainConfig(**{**BUMPY, "scheduler": "plateau", "val_fraction": 0.0, "output_dir": str(tmp_path)})
    with pytest.raises(ValueError, match="plateau.*validation"):
        Trainer(TinyBackbone(seed=0), config, fidelity_names=NAMES).fit(TRAIN)
    with pytest.raises(ValueError, match="plateau_factor"):
        TrainConfig(scheduler="plateau", plateau_factor=1.0)
