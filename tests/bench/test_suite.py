"""The benchmark suite's pipeline at the quick level: files, shapes and bookkeeping (not accuracy)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mfwrap.bench import runner
from mfwrap.bench.grid import EXPERIMENTS, LEVELS, RunSpec, convergence_options, epochs_for
from mfwrap.bench.methods import METHODS
from mfwrap.bench.report import aggregate, label, markdown, write_report
from mfwrap.bench.result import RunResult
from mfwrap.datasets.registry import mn_fraction
from mfwrap.model_file import read_payload


@pytest.fixture
def lmfp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MFWRAP_CACHE", str(tmp_path / "cache"))


def test_learning_curve_runs_skips_what_is_done_and_reports(tmp_path, lmfp_cache):
    root, out = tmp_path / "runs", tmp_path / "report"
    outcome = runner.run_suite(["learning_curve"], "quick", [0], root)
    assert outcome == {"total": 4, "ran": 4, "failed": [], "elsewhere": [], "jobs": []}
    results = [json.loads(p.read_text()) for p in sorted((root / "learning_curve").glob("*/result.json"))]
    assert len(results) == 4
    for result in results:
        single = result["spec"]["method"] == "single_fidelity"
        assert result["n_train"] == {"high": result["spec"]["n_high"], "low": 0 if single else 40}
        assert result["n_val"] == 5 and result["n_test"] == 50 and result["protocol"] == "paper"
        assert result["steps"] == math.ceil(sum(result["n_train"].values()) / 4) * result["epochs"]
        assert set(result["test"]["high"]) == {"energy", "forces", "stress", "magmoms"}
    assert runner.run_suite(["learning_curve"], "quick", [0], root)["ran"] == 0  # all done: nothing reruns
    plan = runner.plan_suite(["learning_curve"], "quick", [0], root=root)["learning_curve"]
    assert plan["trained"] == 4 and plan["steps"] == sum(r["steps"] for r in results)  # the plan counts what runs take
    assert plan["measured"] and plan["seconds_per_step"] > 0
    assert plan["done"] == 4 and plan["done_wall_s"] == pytest.approx(sum(r["wall_s"] for r in results))
    assert plan["left_steps"] == 0  # nothing left to run
    undone = sorted((root / "learning_curve").glob("*/result.json"))[0]
    kept = undone.read_text()
    undone.unlink()
    replan = runner.plan_suite(["learning_curve"], "quick", [0], root=root)["learning_curve"]
    assert replan["left_steps"] == json.loads(kept)["steps"] and replan["done"] == 3
    undone.write_text(kept)
    written = write_report(root, out)
    assert sorted(p.name for p in written) == [
        "claims.md",
        "learning_curve.json",
        "learning_curve.md",
        "learning_curve.png",
    ]
    assert "MF below single-fidelity for N_high ≤ 400" in (out / "claims.md").read_text()
    table = (out / "learning_curve.md").read_text()
    assert table.count("| paper |") == 4 and "MF (ECMR)" in table and "single-fidelity" in table


def test_a_run_two_experiments_share_is_trained_once(tmp_path, lmfp_cache):
    # learning_curve (MF and single-fidelity at N_high 10, 25) and low_fidelity_size (MF at N_high 10 with
    # 20 and all low-fidelity frames) share MF at N_high = 10 with all low-fidelity frames
    outcome = runner.run_suite(["learning_curve", "low_fidelity_size"], "quick", [0], tmp_path)
    assert outcome == {"total": 6, "ran": 5, "failed": [], "elsewhere": [], "jobs": []}
    name = "lmfp_chgnet_multi_fidelity-ECMR_nh10_nlall_paper_s0"
    trained = json.loads((tmp_path / "learning_curve" / name / "result.json").read_text())
    reused = json.loads((tmp_path / "low_fidelity_size" / name / "result.json").read_text())
    assert reused["reused_from"] == f"learning_curve/{name}" and "reused_from" not in trained
    assert reused["spec"]["experiment"] == "low_fidelity_size" and reused["test"] == trained["test"]
    assert not (tmp_path / "low_fidelity_size" / name / "multi_fidelity").exists()  # no second training
    assert runner.reuse_finished(EXPERIMENTS["low_fidelity_size"](LEVELS["medium"], [0]), "medium", tmp_path) == 0


def test_eager_overrides_the_levels_compiled_steps_and_results_say_which(tmp_path, lmfp_cache):
    """--eager: eager training steps on a level that compiles them (medium, full); quick never compiles."""
    medium, quick = LEVELS["medium"], LEVELS["quick"]
    spec = EXPERIMENTS["learning_curve"](medium, [0])[0]

    def compiled(level, **kw):
        return runner._experiment(spec, level, runner.make_splits(spec, level), tmp_path, **kw)[0].train.compile

    assert compiled(medium) is True and compiled(medium, eager=True) is False and compiled(quick) is False
    result = runner.run_one(EXPERIMENTS["learning_curve"](quick, [0])[0], "quick", str(tmp_path), eager=True)
    assert result.compiled_steps is False


def test_mf_options_set_their_trainer_option(tmp_path, lmfp_cache):
    level = LEVELS["quick"]
    specs = {s.method: s for s in EXPERIMENTS["mf_options"](level, [0]) if s.n_high == 10}
    assert set(specs) == {"multi_fidelity", "mf_warm_start", "mf_balanced", "mf_reweighted", "mf_random_init"}
    assert {
        m: runner._experiment(specs[m], level, runner.make_splits(specs[m], level), tmp_path)[0].model.fidelity_init
        for m in ("multi_fidelity", "mf_random_init")
    } == {"multi_fidelity": "zero", "mf_random_init": "random"}
    splits = runner.make_splits(specs["mf_reweighted"], level)
    assert runner.train_options(specs["mf_reweighted"], splits) == {"fidelity_loss_weights": {"high": 40 / 10}}
    assert runner.train_options(specs["mf_balanced"], splits) == {"fidelity_sampling": {"low": 1.0, "high": 1.0}}
    assert runner.train_options(specs["multi_fidelity"], splits) == {}
    result = runner.run_one(specs["mf_balanced"], "quick", str(tmp_path))
    assert result.train_options == {"fidelity_sampling": {"low": 1.0, "high": 1.0}}
    assert result.n_train == {"high": 10, "low": 40} and result.steps == math.ceil(50 / 4) * result.epochs
    (checkpoint,) = tmp_path.glob("mf_options/*/*/last.pt")
    assert read_payload(checkpoint)["config"]["fidelity_sampling"] == {"low": 1.0, "high": 1.0}  # what training used


def test_li3ps4_runs_every_method_on_real_dft(tmp_path):
    outcome = runner.run_suite(["li3ps4"], "quick", [0], tmp_path)
    assert (
        outcome["failed"] == [] and outcome["ran"] == 8
    )  # MF (plain, warm start, balanced, reweighted), SF, transfer, Δ x 2
    for path in (tmp_path / "li3ps4").glob("*/result.json"):
        result = json.loads(path.read_text())
        assert result["target_fidelity"] == "r2scan" and set(result["test"]["r2scan"]) == {"energy"}  # energies only
        assert result["n_train"]["high"] == 10 and result["n_test"] == 10


def test_a_failing_run_is_recorded_and_the_others_go_on(tmp_path, lmfp_cache, monkeypatch):
    real = runner.make_splits

    def broken(spec, level):
        if spec.method == "single_fidelity" and spec.n_high == 10:
            raise RuntimeError("broken on purpose")
        return real(spec, level)

    monkeypatch.setattr(runner, "make_splits", broken)
    outcome = runner.run_suite(["learning_curve"], "quick", [0], tmp_path)
    assert outcome["ran"] == 3 and outcome["failed"] == ["lmfp_chgnet_single_fidelity_nh10_nlall_paper_s0"]
    error = json.loads((tmp_path / "learning_curve" / outcome["failed"][0] / "error.json").read_text())
    assert "broken on purpose" in error["traceback"]


def _result(method, seed, mae, steps, backbone="chgnet"):
    spec = RunSpec("learning_curve", method, 10, None, "paper", seed, backbone=backbone)
    return RunResult(
        spec=spec,
        name=spec.name,
        level="quick",
        protocol="paper",
        epochs=1,
        epochs_run=1,
        steps=steps,
        wall_s=1.0,
        n_train={"high": 10, "low": 40 if method == "multi_fidelity" else 0},
        target_fidelity="high",
        test={"high": {"energy": {"mae": mae, "rmse": 2 * mae}}},
    )


def test_aggregate_is_mean_and_sample_sd_over_seeds():
    rows = aggregate(
        [
            _result("multi_fidelity", 0, 1.0, 13),
            _result("multi_fidelity", 1, 3.0, 13),
            _result("single_fidelity", 0, 5.0, 3),
        ]
    )
    mf = next(r for r in rows if r["method"] == "multi_fidelity")
    assert mf["seeds"] == [0, 1] and mf["test"]["energy"]["mae"] == 2.0
    assert mf["test"]["energy"]["mae_sd"] == pytest.approx(math.sqrt(2.0)) and mf["test"]["energy"]["rmse"] == 4.0
    assert "| MF (ECMR) | 10 | 40 | paper | 13 | 2 | 2 ± 1.4 |" in markdown("learning_curve", rows)
    schnet = _result("multi_fidelity", 0, 7.0, 13, backbone="schnet")
    table = markdown("learning_curve", aggregate([_result("multi_fidelity", 0, 1.0, 13), schnet]))
    assert "| backbone | method |" in table and "| schnet | MF (ECMR) | 10 | 40 | paper | 13 | 1 | 7 ± 0 |" in table


@pytest.mark.parametrize("experiment", ["mf_options", "coverage", "fidelity_gap"])
def test_plots_take_rows_without_every_target(tmp_path, experiment):
    from mfwrap.bench.report import plot

    chgnet = _result("multi_fidelity", 0, 1.0, 13)
    chgnet.test["high"]["magmoms"] = {"mae": 0.1, "rmse": 0.2}
    schnet = _result("single_fidelity", 0, 7.0, 13, backbone="schnet")  # no magmoms, as SchNet
    plot(experiment, aggregate([chgnet, schnet]), tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_protocols_set_the_epochs():
    level = LEVELS["medium"]
    mf, sf = (RunSpec("x", m, 50, None, "equal_compute", 0) for m in ("multi_fidelity", "single_fidelity"))
    assert epochs_for(mf, level, 350, 350, 4) == level.epochs
    assert epochs_for(sf, level, 350, 50, 4) == round(level.epochs * 88 / 13)  # the same optimiser steps
    assert epochs_for(RunSpec("x", "single_fidelity", 50, None, "paper", 0), level, 350, 50, 4) == level.epochs
    mf, sf = (RunSpec("x", m, 50, None, "converged", 0) for m in ("multi_fidelity", "single_fidelity"))
    assert epochs_for(mf, level, 350, 350, 4) == level.max_epochs
    assert convergence_options(mf, level, 350, 350, 4) == {
        "scheduler": "plateau",
        "patience": level.patience,
        "plateau_patience": level.plateau_patience,
    }
    assert epochs_for(sf, level, 350, 50, 4) == round(level.max_epochs * 88 / 13)  # the same ceiling of steps
    assert convergence_options(sf, level, 350, 50, 4) == {  # the same patiences in steps
        "scheduler": "plateau",
        "patience": round(level.patience * 88 / 13),
        "plateau_patience": round(level.plateau_patience * 88 / 13),
    }
    assert convergence_options(RunSpec("x", "single_fidelity", 50, None, "paper", 0), level, 350, 50, 4) == {}
    converged = [s for s in EXPERIMENTS["learning_curve"](level, [0]) if s.protocol == "converged"]
    assert {(s.method, s.n_high) for s in converged} == {
        (m, n) for m in ("multi_fidelity", "single_fidelity") for n in (25, 90)
    }


@pytest.mark.parametrize("level", list(LEVELS))
def test_every_grid_has_unique_runs(level):
    for name, experiment in EXPERIMENTS.items():
        specs = experiment(LEVELS[level], [0, 1, 2])
        assert specs and len({s.name for s in specs}) == len(specs), name
        assert all(s.protocol in ("paper", "equal_compute", "converged") for s in specs)


def test_committed_results_count_as_done_on_a_fresh_checkout(tmp_path, lmfp_cache):
    first, report = tmp_path / "first", tmp_path / "report"
    runner.run_suite(["learning_curve"], "quick", [0], first)
    write_report(first, report)
    fresh = tmp_path / "fresh"  # a new machine: no run directories, only the committed report
    outcome = runner.run_suite(["learning_curve"], "quick", [0], fresh, report=report)
    assert outcome["ran"] == 0 and outcome["failed"] == []
    assert len(list((fresh / "learning_curve").glob("*/result.json"))) == 4
    assert runner.restore_reported(EXPERIMENTS["learning_curve"](LEVELS["medium"], [0]), "medium", fresh, report) == 0


def test_a_learning_curve_run_with_matgl_m3gnet(tmp_path, lmfp_cache):
    spec = RunSpec("learning_curve", "multi_fidelity", 10, 20, "paper", 0, backbone="m3gnet")
    result = runner.run_one(spec, "quick", str(tmp_path))
    assert result.n_train == {"high": 10, "low": 20} and set(result.test["high"]) == {"energy", "forces", "stress"}


def test_low_fidelity_pretraining_is_trained_once_and_is_what_a_run_alone_trains(tmp_path, lmfp_cache):
    """Transfer, Δ and warm-started MF share stage one (the backbone on the low-fidelity frames):
    trained by the first such run, copied into the others; a run trained alone gets the same weights."""
    import torch

    outcome = runner.run_suite(["transfer_delta"], "quick", [0], tmp_path / "suite")
    assert outcome["failed"] == []
    results = {
        p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "suite").glob("transfer_delta/*/result.json")
    }
    pretrained = {name: r for name, r in results.items() if METHODS[r["spec"]["method"]].pretrains}
    assert len(pretrained) == 6  # transfer, delta_model, mf_warm_start at N_high 10 and 25
    trained_here = [name for name, r in pretrained.items() if "pretrain_reused_from" not in r]
    assert len(trained_here) == 1
    assert all(
        r["pretrain_reused_from"] == f"transfer_delta/{trained_here[0]}"
        for name, r in pretrained.items()
        if name != trained_here[0]
    )
    assert all("pretrain_reused_from" not in r for r in results.values() if not METHODS[r["spec"]["method"]].pretrains)

    copied = next(name for name in pretrained if name != trained_here[0] and "_transfer_" in name)
    # killed after the copy and resumed: the run still says where its stage one came from
    (tmp_path / "suite" / "transfer_delta" / copied / "result.json").unlink()
    assert runner.run_suite(["transfer_delta"], "quick", [0], tmp_path / "suite")["ran"] == 1
    again = json.loads((tmp_path / "suite" / "transfer_delta" / copied / "result.json").read_text())
    assert again["pretrain_reused_from"] == f"transfer_delta/{trained_here[0]}"
    spec = RunSpec(**pretrained[copied]["spec"])
    runner.run_one(spec, "quick", str(tmp_path / "alone"))
    alone = read_payload(tmp_path / "alone" / "transfer_delta" / copied / "pretrain" / "last.pt")["state_dict"]
    shared = read_payload(tmp_path / "suite" / "transfer_delta" / copied / "pretrain" / "last.pt")["state_dict"]
    assert alone.keys() == shared.keys()
    for key in alone:
        torch.testing.assert_close(alone[key], shared[key], rtol=0, atol=1e-6, msg=key)


def test_a_converged_run_uses_the_plateau_schedule_and_records_it(tmp_path, lmfp_cache):
    spec = RunSpec("learning_curve", "single_fidelity", 10, None, "converged", 0)
    level = LEVELS["quick"]
    result = runner.run_one(spec, "quick", str(tmp_path))
    options = convergence_options(spec, level, 10 + level.n_low_all, 10, 4)
    assert result.schedule == {
        "scheduler": "plateau",
        "lr": 0.005,
        "lr_min_fraction": 0.01,
        "patience": options["patience"],
        "plateau_patience": options["plateau_patience"],
        "plateau_factor": 0.3,
    }
    ceiling = epochs_for(spec, level, 10 + level.n_low_all, 10, 4)
    assert result.epochs == ceiling and 1 <= result.epochs_run <= ceiling
    assert result.steps == result.epochs_run * math.ceil(10 / 4)
    (checkpoint,) = tmp_path.glob("learning_curve/*/*/last.pt")
    assert read_payload(checkpoint)["config"]["scheduler"] == "plateau"  # what training used


@pytest.mark.parametrize("level_name", ["quick", "medium"])
def test_coverage_trains_on_one_region_and_tests_on_the_other(level_name, lmfp_cache):
    level = LEVELS[level_name]
    specs = EXPERIMENTS["coverage"](level, [0])
    assert {(s.method, s.protocol) for s in specs} >= {
        ("multi_fidelity", "paper"),
        ("single_fidelity", "paper"),
        ("transfer", "paper"),
    }
    assert (("single_fidelity", "equal_compute") in {(s.method, s.protocol) for s in specs}) == (
        "equal_compute" in level.protocols
    )
    for spec in specs:  # every level's grid must fit the data it has
        splits = runner.make_splits(spec, level)
        assert splits.train_high and all(mn_fraction(r) <= 0.5 for r in splits.train_high + splits.val)
        assert splits.test and all(mn_fraction(r) > 0.5 for r in splits.test)
        assert {id(r) for r in splits.train_high}.isdisjoint(id(r) for r in splits.val)


def test_the_ablations_measure_a_residual_readout_with_each_backbone(tmp_path, lmfp_cache):
    level = LEVELS["quick"]
    for experiment, backbone in (("ablations", "chgnet"), ("second_backbone", "schnet")):
        (spec,) = [s for s in EXPERIMENTS[experiment](level, [0]) if s.method == "mf_residual_readout"]
        assert spec.backbone == backbone and spec.n_high == level.ablation_high and spec.protocol == "paper"
        built, epochs = runner._experiment(spec, level, runner.make_splits(spec, level), tmp_path)
        assert (
            built.method == "multi_fidelity" and built.model.mechanisms == "ECMR" and built.model.readout == "residual"
        )
        plain = next(
            s
            for s in EXPERIMENTS[experiment](level, [0])
            if s.method == "multi_fidelity" and s.mechanisms == "ECMR" and s.n_high == spec.n_high
        )
        assert runner._experiment(plain, level, runner.make_splits(plain, level), tmp_path)[0].model.readout == "copies"
        assert epochs == runner._experiment(plain, level, runner.make_splits(plain, level), tmp_path)[1]  # same steps
        assert label(spec.as_dict(), ablation=True) == "F, R shared + residual"


def test_the_second_backbone_trains_through_the_wrapper(tmp_path, lmfp_cache):
    medium = {(s.method, s.protocol, s.n_high) for s in EXPERIMENTS["second_backbone"](LEVELS["medium"], [0])}
    assert {
        ("single_fidelity", "equal_compute", n) for n in LEVELS["medium"].n_high
    } <= medium  # fair at equal steps too
    spec = next(s for s in EXPERIMENTS["second_backbone"](LEVELS["quick"], [0]) if s.method == "multi_fidelity")
    result = runner.run_one(spec, "quick", str(tmp_path))
    assert spec.backbone == "schnet" and result.n_train == {"high": spec.n_high, "low": 40}
    assert set(result.test["high"]) == {"energy", "forces", "stress"}  # SchNet predicts no magmoms


def test_the_fidelity_gap_changes_only_the_low_fidelity_labels(tmp_path, lmfp_cache):
    from mfwrap.datasets.lmfp_gap import gap_of

    medium = EXPERIMENTS["fidelity_gap"](LEVELS["medium"], [0])
    assert {(s.method, s.dataset, s.protocol, s.n_high) for s in medium} == {
        *(("multi_fidelity", d, "paper", n) for d in ("lmfp", "lmfp-gap50", "lmfp-gap0") for n in (25, 90)),
        *(("single_fidelity", "lmfp", "equal_compute", n) for n in (25, 90)),  # SF sees no low-fidelity frame
        ("mf_balanced", "lmfp-gap0", "paper", 25),
        ("mf_balanced", "lmfp", "paper", 25),
    }
    assert {s.mechanisms for s in medium if s.method == "multi_fidelity" and s.dataset == "lmfp-gap0"} == {
        "ECMR",
        "ECM",
    }
    level = LEVELS["quick"]
    splits = {
        d: runner.make_splits(RunSpec("fidelity_gap", "multi_fidelity", 10, None, "paper", 0, dataset=d), level)
        for d in ("lmfp", "lmfp-gap50", "lmfp-gap0")
    }
    shipped = splits["lmfp"]
    forces = lambda records: np.concatenate([r.labels["forces"] for r in records])  # noqa: E731
    for dataset, split in splits.items():
        for part in ("train_high", "val", "test"):  # the same high-fidelity frames and labels at every α
            assert np.array_equal(forces(getattr(split, part)), forces(getattr(shipped, part)))
        assert [r.atoms.get_chemical_formula() for r in split.train_low] == [
            r.atoms.get_chemical_formula() for r in shipped.train_low
        ]  # the same low-fidelity frames, in order
        assert all(r.fidelity == "low" for r in split.train_low)
        if dataset != "lmfp":
            alpha = gap_of(dataset)
            by_high = 2 * forces(splits["lmfp-gap50"].train_low) - forces(shipped.train_low)  # α = 0.5: the mean
            np.testing.assert_allclose(
                forces(split.train_low), (1 - alpha) * by_high + alpha * forces(shipped.train_low), atol=1e-9
            )
    assert np.abs(forces(splits["lmfp-gap0"].train_low) - forces(shipped.train_low)).mean() > 0.1
    result = runner.run_one(
        RunSpec("fidelity_gap", "multi_fidelity", 10, None, "paper", 0, dataset="lmfp-gap50"), "quick", str(tmp_path)
    )
    assert result.spec.dataset == "lmfp-gap50" and result.n_train == {"high": 10, "low": 40}
    write_report(tmp_path, tmp_path / "report")
    assert "| LMFP, gap α = 0.5 | MF (ECMR) | 10 | 40 |" in (tmp_path / "report" / "fidelity_gap.md").read_text()
