"""``mfwrap bench foundation`` end to end at a toy size (mfwrap.bench.foundation_runs): one file per run, the
same optimiser steps for every method, reruns skip, other settings are refused, the aggregate and the claims
are written, locks are released."""

from __future__ import annotations

import json

from mfwrap.cli import main

CASE = "li3ps4_chgnet030"
METHODS = ("foundation", "finetune_refit", "mf_ecmr_prototypes")


def _args(out, root, *extra):
    return [
        "bench", "foundation", "--case", CASE, "--n-high", "3", "--methods", *METHODS, "--replay-n", "4",
        "--replay-sources", "prototypes", "--mf-epochs", "1", "--ood-n", "3", "--jobs", "1",
        "--out", str(out), "--root", str(root), *extra,
    ]  # fmt: skip


def test_bench_foundation_runs_once_skips_refuses_and_aggregates(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MFWRAP_CACHE", str(tmp_path / "cache"))
    out, root = tmp_path / "suite", tmp_path / "runs"
    (out / "medium").mkdir(parents=True)  # a suite level's report folder: its claims.md gains the verdicts
    assert main(_args(out, root)) == 0
    runs_dir = out / "foundation" / "runs" / CASE
    assert sorted(p.name for p in runs_dir.iterdir()) == sorted(f"{m}_nh3_s0.json" for m in METHODS)
    records = {m: json.loads((runs_dir / f"{m}_nh3_s0.json").read_text()) for m in METHODS}
    assert records["finetune_refit"]["steps"] == records["mf_ecmr_prototypes"]["steps"] > 0  # equal compute
    assert records["foundation"]["steps"] == 0
    # the other chemistries' low teacher is CHGNet 0.3.0, the foundation model: it forgets nothing
    assert records["foundation"]["measures"]["forgetting"]["forces"] < 0.1
    for record in records.values():
        assert record["options"]["case"] == CASE and set(record["measures"]["in_domain"]) == {"energy"}
        assert "forces" in record["measures"]["forgetting_real"]  # the origin against real PBEsol labels
    payload = json.loads((out / "foundation.json").read_text())
    assert set(payload["summary"][CASE]["3"]) == set(METHODS)
    assert (out / "foundation.png").stat().st_size > 0 and "N_high 3" in (out / "foundation.md").read_text()
    assert "### Foundation models gaining a fidelity" in (out / "medium" / "claims.md").read_text()
    assert not list(root.rglob(".lock"))  # every lock released

    capsys.readouterr()
    assert main(_args(out, root)) == 0  # everything done: nothing runs again
    assert "3 runs done, 0 to run" in capsys.readouterr().err
    before = {p.name: p.read_bytes() for p in runs_dir.iterdir()}
    assert main(_args(out, root, "--lr", "0.0003")) == 2  # other settings: refused, nothing replaced
    assert "holds a run with other settings; give --overwrite to replace it" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in runs_dir.iterdir()} == before


def test_a_method_that_needs_a_real_lower_fidelity_is_refused_where_there_is_none(tmp_path, capsys):
    args = ["bench", "foundation", "--case", "lmfp_chgnet030", "--methods", "mf_real_low", "--out", str(tmp_path)]
    assert main(args) == 2
    assert "mf_real_low need a real lower fidelity; case lmfp_chgnet030 has none" in capsys.readouterr().err
    assert not (tmp_path / "foundation").exists()
