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
