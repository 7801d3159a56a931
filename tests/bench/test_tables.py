"""The suite's tables of methods and backbones: what each entry builds, and what reads them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mfwrap.bench import runner
from mfwrap.bench.backbones import BACKBONES, SuiteBackbone
from mfwrap.bench.grid import EXPERIMENTS, LEVELS, MF_OPTIONS, RunSpec
from mfwrap.bench.methods import METHODS
from mfwrap.bench.report import label
from mfwrap.cli import build_parser
from mfwrap.train.baselines import METHODS as TRAINING_METHODS


def _splits(n_high=10, n_low=40):
    return runner.Splits(train_high=[None] * n_high, train_low=[None] * n_low, val=[], test=[])


@pytest.mark.parametrize("name", list(METHODS))
def test_each_method_builds_its_experiment_from_its_entry(name, tmp_path):
    entry = METHODS[name]
    spec = RunSpec("x", name, 10, None, "paper", 0)
    experiment, epochs = runner._experiment(spec, LEVELS["quick"], _splits(), tmp_path)
    assert entry.trains in TRAINING_METHODS and experiment.method == entry.trains and epochs == LEVELS["quick"].epochs
    for key, value in entry.model.items():
        assert getattr(experiment.model, key) == value
    for key, value in entry.experiment.items():
        assert getattr(experiment, key) == value
    for key, value in entry.train_options("low", "high", 40, 10).items():
        assert getattr(experiment.train, key) == value
    assert label(spec.as_dict()) == (f"{entry.label} (ECMR)" if name == "multi_fidelity" else entry.label)


def test_what_the_methods_table_says_about_each_method():
    pretrains = {name for name, m in METHODS.items() if m.pretrains}
    assert pretrains == {"transfer", "delta_model", "delta_labels", "mf_warm_start"}
    assert {name for name, m in METHODS.items() if m.selectable} == {"multi_fidelity", "mf_balanced", "mf_reweighted"}
    assert [name for name, m in METHODS.items() if not m.uses_low_fidelity] == ["single_fidelity"]
    assert METHODS["mf_reweighted"].train_options("pbesol", "r2scan", 300, 25) == {
        "fidelity_loss_weights": {"r2scan": 12.0}
    }
    specs = EXPERIMENTS["mf_options"](LEVELS["medium"], [0])
    assert {s.method for s in specs} == set(MF_OPTIONS) == {n for n, m in METHODS.items() if m.mf_option}
    with pytest.raises(ValueError, match="unknown method 'nope' in a run spec"):
        RunSpec("x", "nope", 10, None, "paper", 0)


def test_backbone_capabilities_are_read_from_the_class():
    chgnet, schnet = BACKBONES["chgnet"], BACKBONES["schnet"]
    assert chgnet.predicts_magmoms and chgnet.compilable  # a magmom head; a compiled() method
    assert not schnet.predicts_magmoms and not schnet.compilable
    plain = SuiteBackbone("plain", "torch.nn:Linear", {"quick": {}})
    assert not plain.predicts_magmoms and not plain.compilable
    assert (
        runner._experiment(
            RunSpec("x", "multi_fidelity", 10, None, "paper", 0, backbone="schnet"), LEVELS["medium"], _splits(), "out"
        )[0].train.targets
        == "efs"
    )  # no magmoms to train on


def test_every_backbone_has_arguments_for_every_level():
    for entry in BACKBONES.values():
        assert set(entry.kwargs) == set(LEVELS), entry.name
    assert BACKBONES["chgnet"].kwargs_at("medium") == {}  # the class defaults: the seed paper's CHGNet
    with pytest.raises(ValueError, match="backbone 'chgnet' has no arguments for level 'huge'"):
        BACKBONES["chgnet"].kwargs_at("huge")


def test_the_cli_offers_the_tables_backbones():
    parser = build_parser()
    assert parser.parse_args(["bench", "all", "--backbone", "m3gnet"]).backbone == "m3gnet"
    bench = next(a for a in parser._subparsers._group_actions[0].choices["bench"]._actions if a.dest == "backbone")
    assert list(bench.choices) == list(BACKBONES)
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "all", "--backbone", "mace"])


def test_the_suite_imports_no_backbone_until_a_run_needs_one():
    modules = sorted({entry.class_path.partition(":")[0] for entry in BACKBONES.values()})
    code = (
        "import sys, mfwrap.cli, mfwrap.bench.runner, mfwrap.bench.report, mfwrap.bench.claims; "
        f"mfwrap.cli.build_parser(); print([m for m in {modules!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
