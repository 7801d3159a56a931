"""A finished run is reused only for the same run: its identity (level, data version, backbone, method, ...)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from mfwrap.bench import runner
from mfwrap.bench.backbones import TINY_CHGNET
from mfwrap.bench.grid import EXPERIMENTS, LEVELS
from mfwrap.bench.identity import run_identity
from mfwrap.bench.report import aggregate, write_report
from mfwrap.bench.result import RunResult

COMMITTED = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "suite" / "medium"


def test_results_store_their_identity(quick_bench):
    for path in (quick_bench.root / "quick").glob("learning_curve/*/result.json"):
        result = RunResult.read(path)
        assert (
            result.identity
            == run_identity(result.spec, "quick")
            == json.loads((path.parent / "identity.json").read_text())
        )
        assert result.identity["backbone_kwargs"] == TINY_CHGNET and len(result.identity["dataset_version"]) == 16


def test_a_medium_bench_never_counts_quick_runs(quick_copy, capsys):
    """The trial: one root for both levels; quick and medium share the N_high = 25 runs' names."""
    root = quick_copy.root / "quick"
    medium = EXPERIMENTS["learning_curve"](LEVELS["medium"], [0])
    shared = [s for s in medium if (root / s.experiment / s.name / "result.json").exists()]
    assert len(shared) == 2  # MF and single-fidelity at N_high = 25, paper protocol
    assert runner.plan_suite(["learning_curve"], "medium", [0], root=root)["learning_curve"]["done"] == 0
    assert all(runner.finished(root, s, "medium") is None for s in shared)
    assert runner.reuse_finished(medium, "medium", root) == 0
    warnings = capsys.readouterr().err
    for spec in shared:
        assert f"{spec.name}/result.json: the result of another run (level: 'quick' ≠ 'medium'" in warnings
    with pytest.raises(ValueError, match=r"holds another run \(.*level: 'quick' ≠ 'medium'.*not overwritten"):
        runner.claim_directory(root / shared[0].experiment / shared[0].name, shared[0], "medium")
    # the committed medium report restores the runs that have no directory here, and overwrites no quick result
    assert runner.restore_reported(medium, "medium", root, COMMITTED) == len(medium) - len(shared)
    assert {RunResult.read(root / s.experiment / s.name / "result.json").level for s in shared} == {"quick"}


def test_a_run_of_another_data_version_is_not_reused(quick_copy, capsys):
    root = quick_copy.root / "quick"
    path = sorted(root.glob("learning_curve/*/result.json"))[0]
    data = json.loads(path.read_text())
    data["identity"]["dataset_version"] = "0" * 16  # as if the shipped data set had changed since
    path.write_text(json.dumps(data))
    assert runner.plan_suite(["learning_curve"], "quick", [0], root=root)["learning_curve"]["done"] == 3
    assert "dataset_version: '0000000000000000' ≠" in capsys.readouterr().err


def test_a_report_never_averages_runs_of_different_identities(quick_bench):
    results = [RunResult.read(p) for p in sorted((quick_bench.root / "quick").glob("learning_curve/*/result.json"))]
    other_seed = dataclasses.replace(results[0], spec=dataclasses.replace(results[0].spec, seed=1))
    other_seed.identity = run_identity(other_seed.spec, "quick")
    assert len(aggregate([*results, other_seed])) == 4  # the same run at another seed: averaged
    other_level = dataclasses.replace(other_seed, level="medium", identity=None)
    with pytest.raises(ValueError, match=rf"runs learning_curve/{other_seed.name} and .* differ in .*level"):
        aggregate([*results, other_level])


def test_a_report_of_a_root_holding_two_levels_is_refused(quick_copy):
    root = quick_copy.root / "quick"
    path = sorted(root.glob("learning_curve/*/result.json"))[0]
    data = json.loads(path.read_text())
    data["level"] = "medium"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"holds runs of the levels \['medium', 'quick'\]"):
        write_report(root, quick_copy.out / "mixed")
