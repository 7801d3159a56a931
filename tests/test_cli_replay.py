"""``mfwrap train`` with a pretrained model's origin fidelity and pseudo-label replay from YAML."""

import json

from test_cli import TINY, _refused, _write

import mfwrap
from mfwrap.cli import main
from mfwrap.model_file import ELEMENTS_UNKNOWN
from mfwrap.train import baselines


def _config(directory, replay="{sources: [own], n: 5, seed: 3}", method="multi_fidelity", origin="pbe", extra=""):
    (directory / "high.xyz").exists() or _write(directory / "high.xyz", 8, 1, 1)
    model = TINY[:-1] + f", origin: {origin}}}" if origin else TINY
    config = directory / "run.yaml"
    config.write_text(f"""
method: {method}
model: {model}
data:
  fidelities: [r2scan]
  train: [{{path: high.xyz, fidelity: r2scan}}]
train: {{epochs: 1, output_dir: out, val_fraction: 0, fidelity_sampling: {{pbe: 1, r2scan: 1}}}}
{"replay: " + replay if replay else ""}
{extra}
""")
    return config


def test_replay_frames_carry_the_origin_fidelity_and_a_pretrained_start_fits_the_residual(
    tmp_path, monkeypatch, capsys
):
    """The origin is prepended to the data's fidelities (the target stays last); the replay frames (the
    training structures perturbed, labelled by the model before training) are counted at the origin in the
    run record and cached with their provenance; a pretrained start fits its composition to the residual."""
    original = baselines.initial_backbone

    def marked(experiment):
        backbone = original(experiment)
        backbone.trained_elements = ELEMENTS_UNKNOWN  # as a pretrained backbone is
        return backbone

    monkeypatch.setattr("mfwrap.train.baselines.initial_backbone", marked)
    monkeypatch.setenv("MFWRAP_CACHE", str(tmp_path / "cache"))
    assert main(["train", str(_config(tmp_path))]) == 0
    model = mfwrap.load(tmp_path / "out" / "multi_fidelity" / "best.pt")
    assert model.fidelity_names == ("pbe", "r2scan") and model.origin == "pbe"
    record = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert record["stages"][-1]["trains_on"] == {"pbe": 5, "r2scan": 8}
    provenance = list((tmp_path / "cache").rglob("provenance.json"))
    assert len(provenance) == 1
    log = capsys.readouterr().err
    assert "5 own" in log and "composition fitted to the residual of the model's own prediction" in log


def test_replay_needs_a_multi_fidelity_model_with_an_origin(tmp_path):
    _refused(["train", str(_config(tmp_path, method="single_fidelity", origin=None))], "replay labels structures")
    _refused(["train", str(_config(tmp_path, origin=None))], "set method: multi_fidelity and model.origin")


def test_an_origin_outside_the_data_needs_replay(tmp_path):
    _refused(["train", str(_config(tmp_path, replay=None))], r"model.origin 'pbe' is none of the data's fidelities")


def test_a_missing_replay_file_is_named(tmp_path):
    _refused(
        ["train", str(_config(tmp_path, replay="{sources: [missing.xyz], n: 4}"))],
        "missing.xyz' is neither one of",
    )
