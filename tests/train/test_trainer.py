"""Trainer: learns, fits the composition model, freezes, logs, checkpoints atomically, resumes exactly."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_backbone import TinyBackbone, labelled_graphs

from mfwrap.mechanisms.composition import read_element_energies
from mfwrap.mechanisms.composition_fit import element_counts, fit_linear_composition
from mfwrap.model_file import read_payload
from mfwrap.train import TrainConfig, Trainer

SPEC = TinyBackbone().graph_spec
TRAIN = labelled_graphs(24, 0, 0, SPEC)
TEST = labelled_graphs(8, 1, 0, SPEC)


def _config(tmp_path, **overrides):
    values = {"epochs": 3, "batch_size": 4, "output_dir": str(tmp_path), "progress": False, "seed": 3}
    values.update(overrides)
    return TrainConfig(**values)


def test_training_reduces_error_and_writes_logs(tmp_path):
    model = TinyBackbone(seed=0)
    with torch.no_grad():  # initial values: the prior of the composition fit, kept by absent elements
        model.composition.element_energies.copy_(torch.linspace(-1.0, 1.0, 94))
    initial = read_element_energies(model.composition)
    before = Trainer(TinyBackbone(seed=0), _config(tmp_path / "b")).evaluate(TEST)["default"]["forces"]["mae"]
    result = Trainer(model, _config(tmp_path, epochs=8)).fit(TRAIN, test=TEST)
    after = result["test"]["default"]
    assert after["forces"]["mae"] < 0.8 * before
    assert set(after) == {"energy", "forces", "stress", "magmoms"}
    assert after["forces"]["count"] == 8 * 4 * 3
    _assert_composition_is_the_least_squares_fit(model, initial, tmp_path)
    logged = json.loads((tmp_path / "metrics.json").read_text())
    assert logged["test"]["default"]["energy"]["mae"] == pytest.approx(after["energy"]["mae"])
    csv = (tmp_path / "metrics.csv").read_text().splitlines()
    assert csv[0].startswith("epoch,split,fidelity,target") and any(",test,default,forces," in line for line in csv)
    best = read_payload(tmp_path / "best.pt")
    assert best["epoch"] == result["best"]["epoch"] and "state_dict" in best


def _assert_composition_is_the_least_squares_fit(model, initial, tmp_path):
    """Fitted before training, on the training split only (validation held out), with the module's
    initial values as prior; frozen afterwards."""
    train, val = Trainer(TinyBackbone(seed=0), _config(tmp_path / "split")).split_validation(TRAIN)
    assert len(train) == 22 and len(val) == 2
    fitted = read_element_energies(model.composition)
    expected = fit_linear_composition(train, prior=initial)
    assert torch.allclose(fitted, expected, rtol=1e-6, atol=1e-6), (fitted[[3, 8, 26]], expected[[3, 8, 26]])
    # independently: ordinary least squares of E/N on the atom fractions of Li, O, Fe ...
    counts = element_counts(train)[:, [3, 8, 26]]
    per_atom = np.array([float(g["energy"]) for g in train]) / counts.sum(1)
    solution = np.linalg.lstsq(counts / counts.sum(1, keepdims=True), per_atom, rcond=None)[0]
    assert np.allclose(fitted[[3, 8, 26]].numpy(), solution, atol=1e-4)
    # ... while elements absent from the data keep their initial values
    absent = torch.ones(len(fitted), dtype=torch.bool)
    absent[[3, 8, 26]] = False
    assert torch.equal(fitted[absent], initial[absent])
    # a fit on all structures (validation included) would differ by more than the tolerance
    assert not torch.allclose(fitted, fit_linear_composition(TRAIN, prior=initial), rtol=1e-6, atol=1e-5)


def test_freeze_keeps_named_parameters_fixed(tmp_path):
    """Frozen parameters keep their values; every other trained parameter moves."""
    model = TinyBackbone(seed=0)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    Trainer(model, _config(tmp_path, epochs=1, freeze=["atom_embedding", "filters"])).fit(TRAIN)
    frozen = {name for name in before if name.startswith(("atom_embedding", "filters"))}
    assert frozen == {
        "atom_embedding.weight",
        "filters.0.weight",
        "filters.0.bias",
        "filters.1.weight",
        "filters.1.bias",
    }
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param, before[name]), name
            assert not param.requires_grad, name
        elif name != "composition.element_energies":  # fitted by least squares, never trained
            assert param.requires_grad, name
            assert not torch.allclose(param, before[name], rtol=0, atol=1e-6), name
    with pytest.raises(ValueError, match="match no parameter"):
        Trainer(TinyBackbone(seed=0), _config(tmp_path / "x", freeze=["nonexistent"])).fit(TRAIN)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("schedule", [{}, {"scheduler": "plateau", "plateau_patience": 1, "lr": 0.05, "epochs": 5}])
def test_resume_after_stop_equals_uninterrupted_run(tmp_path, schedule):
    full_model = TinyBackbone(seed=0)
    full = Trainer(full_model, _config(tmp_path / "full", **schedule)).fit(TRAIN, test=TEST)
    if schedule:  # the plateau schedule's state (its best, bad epochs, current lr) must survive the stop too
        history = json.loads((tmp_path / "full" / "metrics.json").read_text())["history"]
        assert min(row["mae"] for row in history if row["target"] == "lr") < 0.05

    stopped = Trainer(TinyBackbone(seed=0), _config(tmp_path / "part", **schedule)).fit(
        TRAIN, test=TEST, stop_after_steps=7
    )
    assert stopped["stopped"]
    resumed_model = TinyBackbone(seed=99)  # different initial weights: everything must come from last.pt
    resumed = Trainer(resumed_model, _config(tmp_path / "part", **schedule)).fit(TRAIN, test=TEST, resume=True)

    for key, value in _state(full_model).items():
        assert torch.equal(value, resumed_model.state_dict()[key]), key
    assert resumed["test"] == full["test"]
    assert (
        json.loads((tmp_path / "part" / "metrics.json").read_text())["history"]
        == json.loads((tmp_path / "full" / "metrics.json").read_text())["history"]
    )


def test_resume_refuses_changed_options(tmp_path):
    Trainer(TinyBackbone(seed=0), _config(tmp_path)).fit(TRAIN, stop_after_steps=2)
    with pytest.raises(ValueError, match="lr"):
        Trainer(TinyBackbone(seed=0), _config(tmp_path, lr=0.1)).fit(TRAIN, resume=True)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable torch file"):
        read_payload(tmp_path / "last.pt")


_KILLED_RUN = """
import io, os, signal, sys, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads({threads})
from tiny_backbone import TinyBackbone, labelled_graphs
from mfwrap.train import TrainConfig, Trainer

# Die by SIGKILL half-way through writing the checkpoint of step {kill_step}: half its bytes are on
# disk (in whatever file the writer chose), nothing after them runs, no clean-up.
save_last, torch_save, writing = Trainer._save_last, torch.save, []
def recording_save_last(self, epoch, step_in_epoch, global_step, num_train):
    writing.append(global_step)
    save_last(self, epoch, step_in_epoch, global_step, num_train)
    writing.pop()
def dying_save(payload, stream, *args, **kwargs):
    if writing != [{kill_step}]:
        return torch_save(payload, stream, *args, **kwargs)
    data = io.BytesIO()
    torch_save(payload, data, *args, **kwargs)
    stream.write(data.getvalue()[: len(data.getvalue()) // 2])
    stream.flush()
    os.kill(os.getpid(), signal.SIGKILL)
Trainer._save_last, torch.save = recording_save_last, dying_save
config = TrainConfig(epochs=3, batch_size=4, output_dir={out!r}, progress=False, seed=3, checkpoint_every=1)
Trainer(TinyBackbone(seed=0), config).fit(labelled_graphs(24, 0, 0, TinyBackbone().graph_spec))
"""


def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path):
    """A real training process killed (SIGKILL, no clean-up) while writing a checkpoint in the middle
    of the second epoch: last.pt still holds the step before, and resuming from it ends with the
    weights and logs of an uninterrupted run. The process kills itself at a fixed point, so nothing
    depends on timing."""
    out, kill_step = tmp_path / "killed", 9  # 22 training structures: 6 steps per epoch, 18 in all
    script = _KILLED_RUN.format(
        tests=str(Path(__file__).parent), out=str(out), kill_step=kill_step, threads=torch.get_num_threads()
    )  # the same arithmetic as this process
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    process = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert process.returncode == -signal.SIGKILL, process.stderr[-3000:]
    assert read_payload(out / "last.pt")["global_step"] == kill_step - 1
    # the half-written file is left behind, beside the intact ones
    assert {p.name for p in out.iterdir()} - {"last.pt", "best.pt", "metrics.json", "metrics.csv"}

    resumed_model = TinyBackbone(seed=5)  # other initial weights: everything must come from last.pt
    Trainer(resumed_model, _config(out, checkpoint_every=1)).fit(TRAIN, resume=True)
    reference = TinyBackbone(seed=0)
    Trainer(reference, _config(tmp_path / "ref", checkpoint_every=1)).fit(TRAIN)
    for key, value in reference.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[key]), key
    for name in ("last.pt", "best.pt"):
        for key, value in read_payload(tmp_path / "ref" / name)["state_dict"].items():
            assert torch.equal(value, read_payload(out / name)["state_dict"][key]), (name, key)
    assert (
        json.loads((out / "metrics.json").read_text())["history"]
        == json.loads((tmp_path / "ref" / "metrics.json").read_text())["history"]
    )


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


def test_a_checkpoint_written_before_an_option_existed_resumes(tmp_path):
    """last.pt of an older mfwrap lacks newer options (here fidelity_loss_weights, patience): they take their
    defaults."""
    import torch as torch_

    Trainer(TinyBackbone(seed=0), _config(tmp_path, epochs=2)).fit(TRAIN, stop_after_steps=3)
    payload = read_payload(tmp_path / "last.pt")
    for option in ("fidelity_loss_weights", "patience"):
        del payload["config"][option]
    torch_.save(payload, tmp_path / "last.pt")
    result = Trainer(TinyBackbone(seed=0), _config(tmp_path, epochs=2)).fit(TRAIN, resume=True)
    assert result["steps"] == 2 * 6 and not result["stopped"]
