"""The foundation experiment's summary, table and verdicts on the issue's targets (mfwrap.bench.foundation)."""

from mfwrap.bench import foundation as F


def _run(method, seed, energy, forces, stress=0.1, ood=(100.0, 1.0), forgetting=(10.0, 20.0, 0.2)):
    return {
        "method": method,
        "seed": seed,
        "steps": 240,
        "wall_s": 60.0,
        "measures": {
            "in_domain": {"energy": energy, "forces": forces, "stress": stress},
            "out_of_domain": {"energy": 5000.0, "forces": ood[0], "stress": ood[1]},
            "forgetting": dict(zip(("energy", "forces", "stress"), forgetting)),
        },
    }


def test_summary_averages_seeds_with_their_spread():
    summary = F.summarise([_run("finetune", 0, 10.0, 50.0), _run("finetune", 1, 14.0, 54.0)])
    entry = summary["finetune"]
    assert entry["seeds"] == [0, 1] and entry["in_domain"]["energy"] == {"mean": 12.0, "std": 2.8284271247461903}
    assert entry["label"] == F.METHODS["finetune"].label


def test_verdicts_hold_partly_or_fail_against_the_targets():
    runs = [
        _run("finetune", 0, 10.0, 50.0, ood=(100.0, 1.0), forgetting=(30.0, 40.0, 0.5)),
        _run("mf_ecmr_replay", 0, 10.4, 60.0, ood=(99.0, 1.1), forgetting=(5.0, 8.0, 0.05)),
    ]
    found = F.verdicts(F.summarise(runs))
    assert found[0].startswith("in-domain within 5 % of the best method: **partly**")  # E within, F not
    assert found[1].startswith("out of domain no worse than fine-tuning: **partly**")  # F better, S worse
    assert found[2].startswith("forgetting at most 20 % of fine-tuning's: **holds**")


def test_the_table_leaves_out_the_energy_of_other_chemistries():
    text = F.table(F.summarise([_run("finetune", 0, 10.0, 50.0)]))
    assert "other chemistries (high) F / S" in text and "5000" not in text
    assert "| fine-tune all weights | 1 | 240 | 10.0 ± 0.0 / 50 ± 0 / 0.100 ± 0.000 | 100 ± 0 / 1.000 ± 0.000 |" in text


def _case_run(case, n_high, method, seed, energy, forces=None, **options):
    run = _run(method, seed, energy, forces if forces is not None else 50.0)
    if forces is None:
        del run["measures"]["in_domain"]["forces"], run["measures"]["in_domain"]["stress"]
    run["measures"]["forgetting_real"] = {"forces": 200.0}
    return {**run, "version": 1, "options": {**F.Options(n_high=n_high, case=case).as_dict(), **options}}


def test_the_aggregate_groups_runs_by_case_and_n_high():
    from mfwrap.bench.foundation_runs import aggregate

    runs = [
        _case_run("li3ps4_chgnet030", 5, "finetune", 0, 40.0),
        _case_run("li3ps4_chgnet030", 20, "finetune", 0, 20.0),
        _case_run("li3ps4_chgnet030", 20, "finetune", 1, 22.0),
        _case_run("lmfp_chgnet030", 25, "finetune", 0, 10.0, forces=50.0),
    ]
    payload = aggregate(runs)
    assert set(payload["summary"]) == {"li3ps4_chgnet030", "lmfp_chgnet030"}
    assert list(payload["summary"]["li3ps4_chgnet030"]) == ["5", "20"]
    assert payload["summary"]["li3ps4_chgnet030"]["20"]["finetune"]["in_domain"]["energy"]["mean"] == 21.0
    assert "n_high" not in payload["options_by_case"]["lmfp_chgnet030"]
    text = F.render(payload)
    assert "#### CHGNet 0.3.0 on li3ps4, N_high 20" in text and "origin vs real pbesol F" in text
    assert "in-domain (r2scan) E |" in text  # the Li3PS4 test frames label energies only


def test_the_aggregate_refuses_runs_of_one_case_with_other_settings():
    import pytest

    from mfwrap.bench.foundation_runs import aggregate

    runs = [
        _case_run("lmfp_chgnet030", 25, "finetune", 0, 10.0, 50.0),
        _case_run("lmfp_chgnet030", 25, "delta", 0, 9.0, 50.0, lr=3e-4),
    ]
    with pytest.raises(ValueError, match="runs of case 'lmfp_chgnet030' with different settings"):
        aggregate(runs)


def test_claims_judge_each_target_over_every_case_and_n_high():
    from mfwrap.bench.foundation_runs import aggregate

    runs = [
        _case_run("lmfp_chgnet030", 25, "finetune", 0, 10.0, 50.0),
        _case_run("lmfp_chgnet030", 25, "mf_ecmr_replay", 0, 10.2, 49.0),
        _case_run("lmfp_chgnet030", 90, "finetune", 0, 8.0, 40.0),
        _case_run("lmfp_chgnet030", 90, "mf_ecmr_replay", 0, 12.0, 60.0),
    ]
    text = F.claims_markdown(aggregate(runs))
    lines = text.splitlines()
    assert "- **partly** — MF with replay in-domain within 5 % of the best method" in lines  # N 25 holds, N 90 fails
    assert sum("N_high 25, MF ECMR + replay 1:1: " in line for line in lines) == 3  # in-domain, OOD, forgetting
    assert "- **fails** — MF with replay forgets at most 20 % of what plain fine-tuning forgets" in lines  # equal
    assert (
        "- **not measured** — (stricter) MF with replay out of domain no worse than fine-tuning with the refit" in lines
    )


def test_the_foundation_model_itself_is_no_candidate_for_the_best_in_domain():
    runs = [
        _run("foundation", 0, 1.0, 1.0),  # a stand-in that beats everything: not a method that trains
        _run("finetune", 0, 10.0, 50.0),
        _run("mf_ecmr_replay", 0, 10.2, 51.0),
    ]
    assert F.verdicts(F.summarise(runs))[0].startswith("in-domain within 5 % of the best method: **holds**")
