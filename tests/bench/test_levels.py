"""Results of different levels never share a folder, and a report never replaces another level's or a larger one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mfwrap.bench.report import write_report
from mfwrap.cli import main

COMMITTED = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "suite" / "medium"


def test_a_quick_bench_writes_its_own_folders_and_leaves_the_medium_reports(quick_bench, snapshot):
    root, out = quick_bench.root, quick_bench.out
    assert snapshot(out / "medium") == quick_bench.medium_before
    assert len(list((root / "quick" / "learning_curve").glob("*/result.json"))) == 4
    runs = json.loads((out / "quick" / "learning_curve.json").read_text())["runs"]
    assert len(runs) == 4 and {run["level"] for run in runs} == {"quick"}
    assert (out / "quick" / "claims.md").is_file() and not (out / "learning_curve.json").exists()


def test_a_report_never_replaces_another_levels_without_force(quick_bench, tmp_path, snapshot):
    root = quick_bench.root
    out = tmp_path / "medium"
    shutil.copytree(COMMITTED, out)
    before = snapshot(out)
    with pytest.raises(ValueError, match=r"learning_curve.json holds medium-level results; not replaced by quick"):
        write_report(root / "quick", out)
    assert snapshot(out) == before  # refused before anything was written
    write_report(root / "quick", out, force=True)
    assert {run["level"] for run in json.loads((out / "learning_curve.json").read_text())["runs"]} == {"quick"}


def test_a_report_never_replaces_one_with_more_runs_without_force(quick_copy, capsys):
    fewer, report = quick_copy.root, quick_copy.out
    next((fewer / "quick" / "learning_curve").glob("*/result.json")).unlink()
    command = ["bench", "report", "--root", str(fewer), "--out", str(report)]
    with pytest.raises(SystemExit) as exit_:
        main(command)
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert "learning_curve.json holds 4 runs; not replaced by a report of 3 (--force replaces it)" in error
    assert len(json.loads((report / "quick" / "learning_curve.json").read_text())["runs"]) == 4
    assert main([*command, "--force"]) == 0
    assert len(json.loads((report / "quick" / "learning_curve.json").read_text())["runs"]) == 3


def test_report_on_a_misspelled_or_empty_root_is_an_error_naming_it(tmp_path, capsys):
    for root, message in ((tmp_path / "runz", "runz: no such directory"), (tmp_path, "no finished run under")):
        with pytest.raises(SystemExit) as exit_:
            main(["bench", "report", "--root", str(root), "--out", str(tmp_path / "out")])
        assert exit_.value.code == 2
        error = capsys.readouterr().err
        assert message in error and str(root) in error
    assert not (tmp_path / "out").exists()
