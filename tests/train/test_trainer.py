"""Trainer: learns, fits the composition model, freezes, logs, checkpoints atomically, resumes exactly."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mfwrap.train import TrainConfig, Trainer
from mfwrap.model_file import read_payload
from tiny_backbone import TinyBackbone, labelled_graphs

SPEC = TinyBackbone().graph_spec
TRAIN = labelled_graphs(24, 0, 0, SPEC)
TEST = labelled_graphs(8, 1, 0, SPEC)


def _config(tmp_path, **overrides):
    values = dict(epochs=3, batch_size=4, output_dir=str(tmp_path), progress=False, seed=3)
    values.update(overrides)
    return TrainConfig(**values)


def test_training_reduces_error_and_writes_logs(tmp_path):
    model = TinyBackbone(seed=0)
    before = Trainer(TinyBackbone(seed=0), _config(tmp_path / "b")).evaluate(TEST)["default"]["forces"]["mae"]
    result = Trainer(model, _config(tmp_path, epochs=4)).fit(TRAIN, test=TEST)
    after = result["test"]["default"]
    assert after["forces"]["mae"] < 0.8 * before
    assert set(after) == {"energy", "forces", "stress", "magmoms"}
    assert after["forces"]["count"] == 8 * 4 * 3
    # composition fitted before training (frozen afterwards): the reference energies are non-zero
    assert (model.composition.element_energies[[2, 7, 25]] != 0).all()
    logged = json.loads((tmp_path / "metrics.json").read_text())
    assert logged["test"]["default"]["energy"]["mae"] == pytest.approx(after["energy"]["mae"])
    csv = (tmp_path / "metrics.csv").read_text().splitlines()
    assert csv[0].startswith("epoch,split,fidelity,target") and any(",test,default,forces," in line for line in csv)
    best = read_payload(tmp_path / "best.pt")
    assert best["epoch"] == result["best"]["epoch"] and "state_dict" in best


def test_freeze_keeps_named_parameters_fixed(tmp_path):
    model = TinyBackbone(seed=0)
    frozen = model.atom_embedding.weight.detach().clone()
    Trainer(model, _config(tmp_path, epochs=1, freeze=["atom_embedding", "filters"])).fit(TRAIN)
    assert torch.equal(model.atom_embedding.weight, frozen)
    with pytest.raises(ValueError, match="match no parameter"):
        Trainer(TinyBackbone(seed=0), _config(tmp_path / "x", freeze=["nonexistent"])).fit(TRAIN)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_resume_after_stop_equals_uninterrupted_run(tmp_path):
    full_model = TinyBackbone(seed=0)
    full = Trainer(full_model, _config(tmp_path / "full")).fit(TRAIN, test=TEST)

    stopped = Trainer(TinyBackbone(seed=0), _config(tmp_path / "part")).fit(TRAIN, test=TEST, stop_after_steps=7)
    assert stopped["stopped"]
    resumed_model = TinyBackbone(seed=99)  # different initial weights: everything must come from last.pt
    resumed = Trainer(resumed_model, _config(tmp_path / "part")).fit(TRAIN, test=TEST, resume=True)

    for key, value in _state(full_model).items():
        assert torch.equal(value, resumed_model.state_dict()[key]), key
    assert resumed["test"] == full["test"]
    assert json.loads((tmp_path / "part" / "metrics.json").read_text())["history"] == \
        json.loads((tmp_path / "full" / "metrics.json").read_text())["history"]


def test_resume_refuses_changed_options(tmp_path):
    Trainer(TinyBackbone(seed=0), _config(tmp_path)).fit(TRAIN, stop_after_steps=2)
    with pytest.raises(ValueError, match="lr"):
        Trainer(TinyBackbone(seed=0), _config(tmp_path, lr=0.1)).fit(TRAIN, resume=True)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable torch file"):
        read_payload(tmp_path / "last.pt")


_KILLED_RUN = """
import sys, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from tiny_backbone import TinyBackbone, labelled_graphs
from mfwrap.train import TrainConfig, Trainer
spec = TinyBackbone().graph_spec
config = TrainConfig(epochs=5, batch_size=4, output_dir={out!r}, progress=False, seed=3, checkpoint_every=1)
Trainer(TinyBackbone(seed=0), config).fit(labelled_graphs(24, 0, 0, spec), resume=True)
"""


def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path):
    """Kill a real training process mid-run (SIGKILL, no clean-up), resume it, compare weights."""
    out = tmp_path / "killed"
    script = _KILLED_RUN.format(tests=str(Path(__file__).parent), out=str(out))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    process = subprocess.Popen([sys.executable, "-c", script], env=env)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if (out / "last.pt").exists():
            try:
                if read_payload(out / "last.pt")["global_step"] >= 4:
                    break
            except ValueError:
                pass
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = read_payload(out / "last.pt")["global_step"]
    assert 4 <= killed_at < 30, killed_at  # really interrupted mid-run (30 steps in all)

    resumed_model = TinyBackbone(seed=5)
    Trainer(resumed_model, _config(out, epochs=5, checkpoint_every=1)).fit(TRAIN, resume=True)
    reference = TinyBackbone(seed=0)
    Trainer(reference, _config(tmp_path / "ref", epochs=5, checkpoint_every=1)).fit(TRAIN)
    for key, value in reference.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[key]), key


def _with_nan_force(graphs, index):
    poisoned = [g.clone() for g in graphs]
    poisoned[index]["forces"] = poisoned[index]["forces"].clone()
    poisoned[index]["forces"][1, 2] = float("nan")
    return poisoned


def test_a_non_finite_loss_stops_training_naming_structure_and_term(tmp_path):
    train = _with_nan_force(TRAIN, 5)
    with pytest.raises(FloatingPointError, match=r"loss term\(s\) \['forces'\].*#5 "):
        Trainer(TinyBackbone(seed=0), _config(tmp_path, epochs=1, val_fraction=0.0)).fit(train)
    assert not (tmp_path / "last.pt").exists()  # nothing written from the poisoned step


def test_skip_mode_skips_and_counts_and_never_saves_nan(tmp_path):
    train = _with_nan_force(TRAIN, 5)
    trainer = Trainer(TinyBackbone(seed=0), _config(tmp_path, epochs=2, val_fraction=0.0, nonfinite="skip"))
    summary = trainer.fit(train)
    assert summary["skipped_batches"] == 2  # structure 5 lies in one batch per epoch
    for name in ("best.pt", "last.pt"):
        weights = read_payload(tmp_path / name)["state_dict"]
        assert all(bool(torch.isfinite(v).all()) for v in weights.values() if v.is_floating_point())
    logged = json.loads((tmp_path / "metrics.json").read_text())
    assert [row["mae"] for row in logged["history"] if row["target"] == "skipped_batches"] == [1, 2]


def test_non_finite_weights_are_never_written(tmp_path):
    model = TinyBackbone(seed=0)
    with torch.no_grad():
        model.readout[0].weight[0, 0] = float("nan")
    trainer = Trainer(model, _config(tmp_path))
    with pytest.raises(RuntimeError, match="refusing to write .*readout.0.weight"):
        trainer.save_model(tmp_path / "best.pt")
    assert not (tmp_path / "best.pt").exists()


def test_the_composition_fit_refuses_a_non_finite_energy(tmp_path):
    train = [g.clone() for g in TRAIN]
    train[7]["energy"] = torch.tensor([float("inf")])
    with pytest.raises(ValueError, match=r"non-finite energy label.*\[7\]"):
        Trainer(TinyBackbone(seed=0), _config(tmp_path, val_fraction=0.0)).fit(train)
