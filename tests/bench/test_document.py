"""benchmarks/README.md: generated from the result files, never edited by hand."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from mfwrap.bench.document import figures, fill, main, render, write_results_document

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
DOCUMENT = ROOT / "benchmarks" / "README.md"


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _copy_results(tmp_path: Path) -> Path:
    """The result files without the models and plots (the document only links those)."""
    copy = tmp_path / "results"
    shutil.copytree(RESULTS, copy, ignore=shutil.ignore_patterns("*.pt", "*.png"))
    return copy


def test_the_committed_document_is_the_generated_one(capsys):
    assert DOCUMENT.read_text(encoding="utf-8") == render(RESULTS, DOCUMENT), (
        "benchmarks/README.md is stale or edited by hand: run python -m mfwrap.bench.document"
    )
    assert main(["--results", str(RESULTS), "--out", str(DOCUMENT), "--check"]) == 0


def test_every_experiment_and_every_result_file_appears():
    text = DOCUMENT.read_text(encoding="utf-8")
    experiments = sorted(RESULTS.glob("suite/medium/*.json"))
    assert len(experiments) >= 9
    for path in experiments:
        assert f"### {path.stem}\n" in text, path.stem
        assert f"](results/suite/medium/{path.name})" in text, path.name
        first_row = path.with_suffix(".md").read_text(encoding="utf-8").splitlines()[4]
        assert first_row in text, f"{path.stem}: its table is not in the document"
    for path in RESULTS.glob("*.json"):
        assert f"](results/{path.name})" in text, path.name
    assert (RESULTS / "suite" / "medium" / "claims.md").read_text(encoding="utf-8").strip() in text
    assert "{{" not in text and "}}" not in text


def test_a_placeholder_naming_a_missing_figure_is_an_error_naming_it(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"discussion\.md: no figure named gap\.nowhere"):
        fill("off by {{gap.forces}} and {{ gap.nowhere }}", figures(RESULTS), "discussion.md")
    assert fill("off by {{ gap.forces }} meV/Å", {"gap.forces": "234"}, "x") == "off by 234 meV/Å"

    results = _copy_results(tmp_path)
    (results / "discussion.md").write_text("## Discussion\n\n{{suite_gpu.hours_on_the_moon}}\n", encoding="utf-8")
    with pytest.raises(ValueError, match="suite_gpu.hours_on_the_moon"):
        write_results_document(results, tmp_path / "README.md")
    assert main(["--results", str(results), "--out", str(tmp_path / "README.md")]) == 2
    assert "no figure named suite_gpu.hours_on_the_moon" in capsys.readouterr().err
    assert not (tmp_path / "README.md").exists()


def test_a_figure_whose_result_file_is_missing_is_an_error(tmp_path):
    results = _copy_results(tmp_path)
    (results / "fidelity_gap.json").unlink()
    with pytest.raises(ValueError, match=r"no figure named gap\.energy_corrected, gap\.forces"):
        render(results, tmp_path / "README.md")


def test_a_result_file_without_a_renderer_is_an_error_naming_it(tmp_path):
    results = _copy_results(tmp_path)
    (results / "speed_of_light.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ValueError, match="speed_of_light.json .*no renderer"):
        render(results, tmp_path / "README.md")


def test_generating_elsewhere_never_touches_the_results(tmp_path):
    before = _snapshot(RESULTS)
    out = write_results_document(RESULTS, tmp_path / "docs" / "results.md")
    assert _snapshot(RESULTS) == before
    text = out.read_text(encoding="utf-8")
    link = Path(os.path.relpath(RESULTS / "suite_gpu.json", out.parent)).as_posix()
    assert f"]({link})" in text  # links are relative to where the document is written


def test_check_names_a_stale_document_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "README.md"
    write_results_document(RESULTS, out)
    assert main(["--results", str(RESULTS), "--out", str(out), "--check"]) == 0
    edited = out.read_text(encoding="utf-8").replace("## Methods", "## Methods, edited by hand")
    out.write_text(edited, encoding="utf-8")
    assert main(["--results", str(RESULTS), "--out", str(out), "--check"]) == 1
    assert str(out) in capsys.readouterr().err
    assert "edited by hand" in out.read_text(encoding="utf-8")


def test_the_noise_floor_is_the_largest_gpu_cpu_difference(tmp_path):
    def run(energy_gpu, energy_cpu):
        maes = lambda e: {"energy": e, "forces": 100.0, "stress": 0.3, "magmoms": 0.02}  # noqa: E731
        return {
            "name": "r",
            "steps": 10,
            "s_per_step": 0.1,
            "test_mae_gpu": maes(energy_gpu),
            "test_mae_cpu": maes(energy_cpu),
        }

    suite_gpu = {
        "alone": {"count": 1, "runs": [run(12.0, 10.0)], "aggregate_steps_per_s": 9.0},
        "at_once": {"count": 2, "runs": [run(7.0, 10.0), run(10.5, 10.0)], "aggregate_steps_per_s": 20.0},
        "full_level_hours": {"one_at_a_time": 500.0},
    }
    (tmp_path / "suite_gpu.json").write_text(json.dumps(suite_gpu), encoding="utf-8")
    found = figures(tmp_path)
    assert found["noise.runs"] == "3"
    assert found["noise.energy"] == "30 %" and found["noise.energy_range"] == "-30.0 % … +20.0 %"
    assert found["noise.forces"] == "0 %"
    assert found["suite_gpu.full_hours_one_at_a_time"] == "500" and found["suite_gpu.at_once_count"] == "2"
    assert "gap.forces" not in found  # no fidelity_gap.json there
