"""A damaged result or report is named, counts as not done and is redone; killed writes' temporaries are removed."""

from __future__ import annotations

import json
import os
import time

from mfwrap.bench import runner
from mfwrap.bench.report import write_report
from mfwrap.cli import main
from mfwrap.files import remove_interrupted_writes


def test_a_truncated_result_is_named_not_done_and_trained_again(quick_copy, capsys):
    root = quick_copy.root / "quick"
    damaged = sorted(root.glob("learning_curve/*/result.json"))[0]
    good = damaged.read_text()
    damaged.write_text(good[: len(good) // 2])  # as a full disk or a copy cut short leaves it
    plan = runner.plan_suite(["learning_curve"], "quick", [0], root=root)["learning_curve"]
    assert plan["done"] == 3 and plan["left_steps"] == json.loads(good)["steps"]
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"warning: {damaged}: damaged JSON" in error and "not done" in error
    assert len(write_report(root, quick_copy.out / "fewer", force=True)) == 4  # the report of the 3 good runs
    assert len(json.loads((quick_copy.out / "fewer" / "learning_curve.json").read_text())["runs"]) == 3
    assert runner.run_suite(["learning_curve"], "quick", [0], root) == {
        "total": 4,
        "ran": 1,
        "failed": [],
        "elsewhere": [],
        "jobs": [],
    }
    again = json.loads(damaged.read_text())
    assert again["test"] == json.loads(good)["test"]  # resumed from its finished checkpoint: the same model


def test_garbage_in_a_report_under_out_is_named_and_replaced(quick_copy, capsys):
    report = quick_copy.out / "quick" / "learning_curve.json"
    report.write_text("garbage{")
    command = [
        "bench",
        "learning_curve",
        "--level",
        "quick",
        "--root",
        str(quick_copy.root),
        "--out",
        str(quick_copy.out),
    ]
    assert main(command) == 0
    error = capsys.readouterr().err
    assert f"warning: {report}: damaged JSON" in error and "no run restored from it" in error
    assert len(json.loads(report.read_text())["runs"]) == 4


def test_the_temporaries_of_killed_writes_are_removed_on_the_next_start(quick_copy):
    root = quick_copy.root / "quick"
    run = sorted(root.glob("learning_curve/*/result.json"))[0].parent
    fresh, old = run / ".last.pt.k3x9_a0q.tmp", run.parent / ".result.json.z0z0z0z0.tmp"
    keep = run / "notes.tmp"  # not one of write_atomic's
    for path in (fresh, old, keep):
        path.write_bytes(b"partial")
    os.utime(old, (time.time() - 3600,) * 2)
    runner.run_suite(["learning_curve"], "quick", [0], root)  # every run done: only the old one is removed
    assert fresh.exists() and not old.exists() and keep.exists()
    assert remove_interrupted_writes(run) == [fresh] and keep.exists()  # what a run does when it starts
