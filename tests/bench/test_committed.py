"""The committed suite reports (benchmarks/results/suite/medium) read back and regenerate byte for byte."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mfwrap.bench.claims import check_claims, claims_document, claims_markdown, read_report
from mfwrap.bench.grid import EXPERIMENTS, LEVELS
from mfwrap.bench.report import experiment_report, write_report
from mfwrap.bench.result import RunResult, read_runs
from mfwrap.bench.runner import finished, restore_reported

COMMITTED = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "suite" / "medium"
EXPERIMENT_FILES = sorted(COMMITTED.glob("*.json"))


def test_the_committed_reports_exist():
    assert {p.stem for p in EXPERIMENT_FILES} == set(EXPERIMENTS)


def test_claims_regenerate_from_the_committed_reports_byte_for_byte():
    """The seed paper's claims from the suite's reports, then the foundation experiment's verdicts."""
    text = (COMMITTED / "claims.md").read_text()
    assert claims_document(COMMITTED) == text
    assert text.startswith(claims_markdown(check_claims(read_report(COMMITTED))))
    assert "### Foundation models gaining a fidelity" in text


@pytest.mark.parametrize("path", EXPERIMENT_FILES, ids=lambda p: p.stem)
def test_each_experiment_report_regenerates_from_its_runs_byte_for_byte(path):
    """Groups (means and sds over seeds), the JSON with every run and the markdown table: all from the runs."""
    _, text, table = experiment_report(path.stem, read_runs(path))
    assert text == path.read_text()
    assert table == (COMMITTED / f"{path.stem}.md").read_text()


def test_restored_runs_rebuild_the_report(tmp_path):
    """A fresh checkout restores the committed runs as result.json files; the report written from them (to a
    temporary directory) has the committed claims and the tables of the experiments whose runs all restore."""
    root, out = tmp_path / "runs", tmp_path / "benchmarks" / "results" / "suite" / "medium"
    shutil.copytree(COMMITTED.parents[1], out.parents[1], ignore=shutil.ignore_patterns("suite"))  # the other results
    out.parent.mkdir(parents=True)
    for name in ("foundation.json", "foundation.md", "foundation.png"):  # the foundation experiment beside the levels
        shutil.copy2(COMMITTED.parent / name, out.parent / name)
    specs = [
        spec
        for experiment in EXPERIMENTS.values()
        for backbone in ("chgnet", "schnet")
        for spec in experiment(LEVELS["medium"], [0, 1, 2], backbone=backbone)
    ]
    restored = restore_reported(specs, "medium", root, COMMITTED)
    committed_runs = {p.stem: read_runs(p) for p in EXPERIMENT_FILES}
    assert restored == sum(len(runs) for runs in committed_runs.values())  # every committed run has its spec
    # their identity is their spec's at the medium level under this code: they count as done, nothing retrains
    assert sum(finished(root, spec, "medium") is not None for spec in specs) == restored
    write_report(root, out)
    for experiment in committed_runs:
        assert (out / f"{experiment}.md").read_text() == (COMMITTED / f"{experiment}.md").read_text(), experiment
    assert (out / "claims.md").read_text() == (COMMITTED / "claims.md").read_text()
    # a report into a results tree (one with the document's templates) regenerates the results document too
    assert (out.parents[2] / "README.md").read_text() == (COMMITTED.parents[2] / "README.md").read_text()


def _a_run() -> dict:
    return json.loads(EXPERIMENT_FILES[0].read_text())["runs"][0]


def test_a_result_without_the_later_keys_reads_and_writes_back_unchanged():
    run = _a_run()
    for key in ("train_options", "fidelity_init", "compiled_steps", "schedule"):
        run.pop(key, None)
    result = RunResult.from_json(run)
    assert result.schedule is None and result.to_json() == run and list(result.to_json()) == list(run)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda run: run.pop("test"), "lacks ['test']"),
        (lambda run: run.update(extra=1), "unknown key(s) ['extra']"),
        (lambda run: run["spec"].update(colour="red"), "'spec' must be a dict of"),
        (lambda run: run["spec"].pop("seed"), "'spec' lacks a field"),
        (lambda run: run["spec"].update(method="mf_magic"), "unknown method 'mf_magic'"),
    ],
)
def test_a_result_with_other_keys_is_refused_with_the_key_named(change, message, tmp_path):
    run = _a_run()
    change(run)
    path = tmp_path / "result.json"
    path.write_text(json.dumps(run))
    with pytest.raises(ValueError, match="result.json") as error:
        RunResult.read(path)
    assert message in str(error.value)
