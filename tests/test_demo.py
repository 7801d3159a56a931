"""``python -m mfwrap.demo`` (what `make demo` runs: the foundation workflow) and ``--scratch`` end to end at a
tiny size."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_scratch_demo_runs_end_to_end(tmp_path):
    env = {**os.environ, "MFWRAP_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "CI": "1"}
    out = tmp_path / "demo"
    command = [
        sys.executable,
        "-m",
        "mfwrap.demo",
        "--scratch",
        "--epochs",
        "1",
        "--n-high",
        "8",
        "--n-low",
        "16",
        "--n-test",
        "6",
        "--jobs",
        "1",
        "--high-share",
        "0.5",
        "--out",
        str(out),
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "high-fidelity test errors (6 frames" in done.stdout and "multi-fidelity" in done.stdout
    assert (
        "protocol equal-compute: multi-fidelity 1 epoch(s) over 24 frames = 6 optimiser steps; "
        "single-fidelity 3 epoch(s) over 8 frames = 6 steps" in done.stdout
    )
    summary = json.loads((out / "demo.json").read_text())
    assert summary["n_test"] == 6 and set(summary["test"]) == {"multi-fidelity", "single-fidelity"}
    assert (
        summary["multi_fidelity_high_share"] == 0.5 and "draws 50% of each epoch from the high fidelity" in done.stdout
    )
    from mfwrap.model_file import read_payload

    assert read_payload(out / "multi_fidelity" / "last.pt")["config"]["fidelity_sampling"] == {"low": 0.5, "high": 0.5}
    assert read_payload(out / "single_fidelity" / "last.pt")["config"]["fidelity_sampling"] == {}
    assert summary["protocol"] == "equal-compute" and summary["steps"] == {"multi-fidelity": 6, "single-fidelity": 6}
    for metrics in summary["test"].values():
        assert set(metrics["high"]) == {"energy", "forces", "stress", "magmoms"}
        assert all(0 < metrics["high"][t]["mae"] < 1e4 for t in metrics["high"])
    assert (out / "parity.png").stat().st_size > 10_000
    for run in ("multi_fidelity", "single_fidelity"):
        assert (out / run / "best.pt").is_file() and (out / run / "metrics.csv").is_file()


def test_foundation_demo_trains_both_methods_at_equal_steps_and_exports_the_new_fidelity(tmp_path):
    env = {**os.environ, "MFWRAP_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "CI": "1"}
    out = tmp_path / "demo"
    options = ["--n-high", "4", "--replay-n", "4", "--mf-epochs", "1", "--ood-n", "3", "--jobs", "1"]
    command = [sys.executable, "-m", "mfwrap.demo", *options, "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "4 high-fidelity frames, 4 replay frames; fine-tuning 2 epochs, MF 1 epochs" in done.stdout
    summary = json.loads((out / "demo.json").read_text())["summary"]
    assert set(summary) == {"foundation", "finetune_refit", "mf_ecmr_replay"}
    assert summary["finetune_refit"]["steps"] == summary["mf_ecmr_replay"]["steps"] == 2
    assert summary["foundation"]["forgetting"]["forces"]["mean"] < 0.1  # meV/Å: native CHGNet = the official teacher
    for entry in summary.values():
        assert {"in_domain", "out_of_domain", "forgetting"} <= set(entry)
    line = next(x for x in done.stdout.splitlines() if x.startswith("exported the high fidelity"))
    energy, forces = (float(x) for x in re.findall(r"≤ ([0-9.e+-]+)", line))
    assert energy < 1e-5 and forces < 1e-4
    import mfwrap
    from backbones.chgnet import CHGNet

    assert type(mfwrap.load(out / "r2scan_chgnet.pt")) is CHGNet
