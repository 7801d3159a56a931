"""Run configs are checked whole before anything is read or trained: a mistake anywhere (an unknown
key, a wrong type, a misspelled backbone or fidelity, a learning rate that trains nothing) is one
line naming the key path and what is allowed; relative paths in a config are relative to its folder."""

import re
import sys
from pathlib import Path

import pytest

from mfwrap.cli import main
from mfwrap.train.baselines import Experiment
from mfwrap.train.data import DataConfig

sys.path.insert(0, str(Path(__file__).parent))
from test_cli import TINY, _write, refusal  # noqa: E402  (the tiny backbone's labelled extxyz files)

SOURCES = "train: [{path: low.xyz, fidelity: pbe}, {path: high.xyz, fidelity: r2scan}]"


@pytest.mark.parametrize(
    "text, pattern",
    [
        (f"modle: {{}}\ndata: {{{SOURCES}}}", r"unknown top-level key\(s\) \['modle'\]; known are \['data', 'method'"),
        (
            f"model: {{mechanism: E}}\ndata: {{{SOURCES}}}",
            r"model: unknown key\(s\) \['mechanism'\]; known are \[.*'mechanisms'",
        ),
        ("data: {train: [{path: a.xyz, fidelity: pbe, limt: 3}]}", r"data.train\[0\]: unknown key\(s\) \['limt'\]"),
        (f"data: {{{SOURCES}, tset: []}}", r"data: unknown key\(s\) \['tset'\]; known are \[.*'test'"),
        (f"data: {{{SOURCES}}}\ntrain: {{epochs: '2'}}", r"train.epochs: expected an integer, got '2' \(a string\)"),
        (f"data: {{{SOURCES}}}\ntrain: {{batch_size: 2.5}}", r"train.batch_size: expected an integer, got 2.5"),
        (f"data: {{{SOURCES}}}\ntrain: {{lr: 1e-3}}", r"train.lr: expected a number, got '1e-3'.*decimal point"),
        ("data: [{path: a.xyz, fidelity: pbe}]", r"data: expected a mapping of \['fidelities', 'train'"),
        ("data: {lmfp: {seed: one}}", r"data.lmfp.seed: expected an integer, got 'one'"),
        (f"data: {{{SOURCES}}}\nmodel: {{mechanisms: ECX}}", r"model: mechanisms must be a subset of 'ECMR'"),
        (f"data: {{{SOURCES}}}\npretrain: {{epochs: '1'}}", r"pretrain.epochs: expected an integer"),
        (f"data: {{{SOURCES}}}\ntrain: {{target_fidelity: hi}}", r"unknown fidelity 'hi' \(known: \['pbe', 'r2scan'"),
        (f"data: {{{SOURCES}}}\ntrain: {{lr: 0}}", r"train: lr must be > 0, got 0.0: the weights would never change"),
        (f"data: {{{SOURCES}}}\ntrain: {{lr: -0.001}}", r"train: lr must be > 0, got -0.001"),
        (f"data: {{{SOURCES}}}\ntrain: [epochs, 2]", r"train: expected a mapping of \['targets', 'epochs'"),
    ],
)
def test_a_config_mistake_is_one_line_naming_the_key_before_anything_is_read(tmp_path, text, pattern):
    (tmp_path / "run.yaml").write_text(f"{text}\n")  # the data files do not exist: nothing gets that far
    message = refusal(["train", str(tmp_path / "run.yaml")])
    assert re.search(rf"^mfwrap train: error: {re.escape(str(tmp_path / 'run.yaml'))}: .*{pattern}", message), message


def test_a_misspelled_backbone_names_the_known_ones(tmp_path):
    (tmp_path / "run.yaml").write_text(f"model: {{backbone: 'backbones.chgnet:CHGNett'}}\ndata: {{{SOURCES}}}\n")
    message = refusal(["train", str(tmp_path / "run.yaml")])
    assert re.search(
        r"model.backbone 'backbones.chgnet:CHGNett' does not name a backbone class .*CHGNett.*"
        r"known backbones: \[.*'backbones.chgnet:CHGNet'",
        message,
    ), message


def test_the_python_api_checks_as_the_config_does():
    with pytest.raises(ValueError, match=r"model: unknown key\(s\) \['mechanism'\]"):
        Experiment(model={"mechanism": "E"})
    with pytest.raises(ValueError, match=r"lr must be > 0"):
        Experiment(train={"lr": 0.0})
    with pytest.raises(ValueError, match=r"pretrain: \['output_dir'\] are set by the method"):
        Experiment(method="transfer", pretrain={"output_dir": "elsewhere"})
    with pytest.raises(ValueError, match=r"data.train\[0\].limit: expected an integer or null, got '3'"):
        DataConfig.from_dict({"train": [{"path": "a.xyz", "fidelity": "pbe", "limit": "3"}]})
    with pytest.raises(ValueError, match=r"data.train\[0\].keys.energy: expected a string or null, got 3"):
        DataConfig(train=[{"path": "a.xyz", "fidelity": "pbe", "keys": {"energy": 3}}])


def test_relative_paths_are_relative_to_the_config_file(tmp_path, monkeypatch, capsys):
    """Sources and output_dir written in the file: against its folder; --output-dir: against the working directory."""
    folder, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (folder / "data").mkdir(parents=True)
    elsewhere.mkdir()
    _write(folder / "data" / "low.xyz", 6, 0, 0)
    _write(folder / "data" / "high.xyz", 6, 1, 1)
    (folder / "run.yaml").write_text(f"""
model: {TINY}
data:
  fidelities: [pbe, r2scan]
  train: [{{path: data/low.xyz, fidelity: pbe}}, {{path: data/high.xyz, fidelity: r2scan}}]
train: {{epochs: 1, targets: ef, output_dir: out, progress: false}}
""")
    monkeypatch.chdir(elsewhere)
    assert main(["train", "../project/run.yaml"]) == 0
    assert (folder / "out" / "multi_fidelity" / "best.pt").is_file() and not (elsewhere / "out").exists()
    assert main(["train", "../project/run.yaml", "--output-dir", "here"]) == 0
    assert (elsewhere / "here" / "multi_fidelity" / "best.pt").is_file()

    (folder / "run.yaml").write_text((folder / "run.yaml").read_text().replace("data/high.xyz", "data/hihg.xyz"))
    message = refusal(["train", "../project/run.yaml", "--output-dir", "again"])
    assert "data source ../project/data/hihg.xyz: no such file" in message, message
