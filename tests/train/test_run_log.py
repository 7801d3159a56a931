"""The training log (stderr) and the run records: what every stage trains and validates on, one line
per epoch where no progress bar shows, wall times per epoch and in total."""

import dataclasses
import json

import pytest
from tiny_backbone import TinyBackbone, labelled_graphs

from mfwrap.train import TrainConfig, Trainer
from mfwrap.train.baselines import Experiment, run_experiment

SPEC = TinyBackbone().graph_spec
FIDELITIES = ["low", "high"]
LOW = labelled_graphs(20, 0, 0, SPEC, magmoms=False)
HIGH = labelled_graphs(8, 1, 1, SPEC)
HIGH_VAL = labelled_graphs(4, 2, 1, SPEC)
MODEL = {"backbone": "tiny_backbone:TinyBackbone", "kwargs": {"features": 8}}


def _experiment(tmp_path, method, **extra):
    train = TrainConfig(epochs=2, batch_size=4, output_dir=str(tmp_path), seed=0)
    return Experiment(method=method, model=MODEL, train=train, **extra)


def _record(tmp_path):
    return json.loads((tmp_path / "metrics.json").read_text())


def test_transfer_says_its_pretraining_holds_out_low_fidelity_frames_and_records_every_stage(tmp_path, capsys):
    """The trial: validation frames given only at the target fidelity; the pre-training silently held
    out 10 % of its low-fidelity frames and its steps were only in pretrain/metrics.csv."""
    summary = run_experiment(_experiment(tmp_path, "transfer"), FIDELITIES, LOW + HIGH, HIGH_VAL)
    log = capsys.readouterr().err
    assert "pretrain: the validation frames given (high 4) include none at ['low']" in log
    assert "val_fraction 0.1 of its training frames" in log
    assert "pretrain: trains on 18 (low 18) structures, 2 epochs of 5 steps" in log
    assert "validates on 2 (low 2) held out of its training frames (val_fraction 0.1)" in log
    assert "transfer: trains on 8 (high 8) structures, 2 epochs of 2 steps" in log
    assert "validates on the 4 (high 4) given" in log
    assert "transfer: 10 (pretrain) + 4 (transfer) = 14 optimiser steps in" in log

    record = _record(tmp_path)
    pretrain, transfer = record["stages"]
    assert (pretrain["stage"], pretrain["trains_on"], pretrain["validates_on"]) == ("pretrain", {"low": 18}, {"low": 2})
    assert (pretrain["val_source"], pretrain["val_fraction"]) == ("held out", 0.1)
    assert (transfer["trains_on"], transfer["validates_on"]) == ({"high": 8}, {"high": 4})
    assert transfer["val_source"] == "given"
    assert [pretrain["steps"], transfer["steps"]] == [10, 4] and pretrain["epochs_run"] == transfer["epochs_run"] == 2
    assert record["total"]["steps"] == 14 and summary["total"] == record["total"]
    assert record["total"]["wall_s"] == pytest.approx(pretrain["wall_s"] + transfer["wall_s"])
    assert pretrain["wall_s"] > 0 and transfer["wall_s"] > 0
    assert summary["steps"] == 4  # the final stage's, as before (the benchmark suite reads it)
    stage_file = json.loads((tmp_path / "pretrain" / "metrics.json").read_text())
    held_out = {"val_source": "held out", "val_fraction": 0.1}
    assert stage_file["data"] == {"train": {"low": 18}, "val": {"low": 2}, **held_out}


def test_single_fidelity_says_which_structures_it_leaves_out(tmp_path, capsys):
    """The trial: low-fidelity sources in train, silently trained on the target fidelity only."""
    run_experiment(_experiment(tmp_path, "single_fidelity"), FIDELITIES, LOW + HIGH, HIGH_VAL)
    log = capsys.readouterr().err
    assert "single_fidelity: trains and validates at 'high' only; the 20 training and validation structures" in log
    assert "at other fidelities are left out (low 20)" in log
    (stage,) = _record(tmp_path)["stages"]
    assert stage["trains_on"] == {"high": 8} and stage["validates_on"] == {"high": 4}


def test_delta_with_paired_labels_and_warm_start_record_their_stages(tmp_path, capsys):
    twins = labelled_graphs(8, 1, 0, SPEC, magmoms=False)  # the structures of HIGH
    run_experiment(_experiment(tmp_path / "delta", "delta"), FIDELITIES, LOW + twins + HIGH, HIGH_VAL)
    stages = _record(tmp_path / "delta")["stages"]
    assert [s["stage"] for s in stages] == ["pretrain", "correction", "delta"]
    assert stages[0]["trains_on"] == {"low": 25} and stages[0]["validates_on"] == {"low": 3}
    assert stages[1]["trains_on"] == {"high": 7} and stages[1]["val_source"] == "held out"  # differences high − low
    assert stages[2] == {**stages[2], "trains_on": {}, "validates_on": {"high": 4}, "val_source": "given", "steps": 0}
    assert stages[2]["epochs_run"] == 0
    assert _record(tmp_path / "delta")["total"]["steps"] == stages[0]["steps"] + stages[1]["steps"]

    run_experiment(_experiment(tmp_path / "warm", "multi_fidelity", warm_start=True), FIDELITIES, LOW + HIGH)
    pretrain, final = _record(tmp_path / "warm")["stages"]
    assert pretrain["trains_on"] == {"low": 18} and final["stage"] == "multi_fidelity"
    assert final["trains_on"] == {"low": 18, "high": 7} and final["validates_on"] == {"low": 2, "high": 1}
    assert "pretrain: trains on 18 (low 18)" in capsys.readouterr().err


def _fit(tmp_path, capsys, **options):
    config = TrainConfig(epochs=3, batch_size=4, output_dir=str(tmp_path), seed=0, **options)
    Trainer(TinyBackbone(seed=0), config).fit(labelled_graphs(12, 0, 0, SPEC))
    return capsys.readouterr().err


def test_one_line_per_epoch_when_stderr_is_not_a_terminal(tmp_path, capsys):
    """The trial: with stderr not a terminal, nothing until the end, and progress: true did nothing."""
    log = _fit(tmp_path, capsys).splitlines()  # pytest's captured stderr is not a terminal
    epochs = [line for line in log if ": loss " in line]
    assert len(log) == 4 and "trains on 11 (default 11) structures" in log[0]
    assert len(epochs) == 3 and epochs[0].startswith(f"{tmp_path.name} epoch 1/3: loss ")
    for line in epochs:
        assert "val MAE at 'default': energy " in line and " meV/atom, forces " in line and " meV/Å" in line
        assert "; lr " in line and " s in all)" in line
    assert _fit(tmp_path / "quiet", capsys, progress=False) == ""


def test_wall_times_per_epoch_and_in_total_survive_a_resume(tmp_path, capsys):
    graphs = labelled_graphs(12, 0, 0, SPEC)
    config = TrainConfig(epochs=3, batch_size=4, output_dir=str(tmp_path), seed=0, progress=False)
    Trainer(TinyBackbone(seed=0), config).fit(graphs, stop_after_steps=4)  # stops inside epoch 2 (3 steps each)
    summary = Trainer(TinyBackbone(seed=0), dataclasses.replace(config, progress=True)).fit(graphs, resume=True)
    stage = capsys.readouterr().err.splitlines()[0]
    assert "3 epochs of 3 steps (batch 4, lr 0.005); validates on 1 (default 1) held out" in stage
    assert stage.endswith("; resumed after 4 steps")
    logged = json.loads((tmp_path / "metrics.json").read_text())
    wall = logged["epoch_wall"]
    assert [row["epoch"] for row in wall] == [0, 1, 2]
    assert all(row["wall_s"] > 0 for row in wall)
    elapsed = [row["elapsed_s"] for row in wall]
    assert elapsed == sorted(elapsed) and elapsed[0] >= wall[0]["wall_s"]
    assert logged["wall_s"] == summary["wall_s"] >= elapsed[-1]

    csv = (tmp_path / "metrics.csv").read_text().splitlines()
    assert csv[0] == "epoch,split,fidelity,target,unit,mae,rmse,count,wall_s,elapsed_s"  # new columns at the end
    rows = [line.split(",") for line in csv[1:]]
    first_train = next(row for row in rows if row[1] == "train" and row[0] == "0")
    assert float(first_train[8]) == pytest.approx(wall[0]["wall_s"]) and float(first_train[9]) == elapsed[0]
