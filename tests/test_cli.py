"""The mfwrap command: train from YAML (files or the LMFP set, --output-dir, --resume), evaluate and
predict with its checkpoints (what predict writes, default fidelities), refused files, --help."""

import dataclasses
import json
import re
import shlex
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress, voigt_6_to_full_3x3_stress

import mfwrap
from mfwrap.cli import build_parser, main
from mfwrap.data.graph import EV_PER_A3_TO_GPA
from mfwrap.model_file import read_payload, save_model
from mfwrap.train import trainer as trainer_module

sys.path.insert(0, str(Path(__file__).parent / "train"))
from tiny_backbone import TinyBackbone, labelled_graphs, random_structures  # noqa: E402

TINY = '{backbone: "tiny_backbone:TinyBackbone", kwargs: {features: 8}, mechanisms: EMR}'


def _write(path, count, seed, fidelity, energy_key="energy", magmoms=True):
    """extxyz of tiny-teacher labels; low fidelity keeps its energy in info under ``energy_key``."""
    graphs = labelled_graphs(count, seed, fidelity, TinyBackbone().graph_spec, magmoms=magmoms)
    frames = random_structures(count, seed)
    for atoms, graph in zip(frames, graphs):
        results = {
            "forces": graph.forces.numpy(),
            "stress": full_3x3_to_voigt_6_stress(graph.stress[0].numpy() / EV_PER_A3_TO_GPA),
        }
        if magmoms:
            results["magmoms"] = graph.magmoms.numpy()
        if energy_key == "energy":
            results["energy"] = float(graph.energy)
        else:
            atoms.info[energy_key] = float(graph.energy)
        atoms.calc = SinglePointCalculator(atoms, **results)
    ase.io.write(path, frames, format="extxyz")


@pytest.fixture
def data(tmp_path):
    """low.xyz (pbe, energy under pbe_energy, no magmoms), high.xyz and test.xyz (r2scan)."""
    _write(tmp_path / "low.xyz", 12, 0, 0, energy_key="pbe_energy", magmoms=False)
    _write(tmp_path / "high.xyz", 8, 1, 1)
    _write(tmp_path / "test.xyz", 4, 2, 1)
    return tmp_path


def _config(directory, method="multi_fidelity", fidelities="[pbe, r2scan]", train="", extra="", name="run.yaml"):
    config = directory / name
    config.write_text(f"""
method: {method}
model: {TINY}
data:
  fidelities: {fidelities}
  train:
    - {{path: {directory / "low.xyz"}, fidelity: pbe, keys: {{energy: pbe_energy, forces: forces, stress: stress}}}}
    - {{path: {directory / "high.xyz"}, fidelity: r2scan, limit: 6}}
  test: [{{path: {directory / "test.xyz"}, fidelity: r2scan}}]
train: {{epochs: 2, output_dir: {directory / "out"}, progress: false{train}}}
{extra}
""")
    return config


def test_train_evaluate_predict(data, capsys):
    assert main(["train", str(_config(data))]) == 0
    printed = capsys.readouterr().out
    assert "test errors at fidelity 'r2scan'" in printed and "forces" in printed and "magmoms" in printed
    best = data / "out" / "multi_fidelity" / "best.pt"
    history = json.loads((best.parent / "metrics.json").read_text())
    assert history["config"]["epochs"] == 2

    assert (
        main(["evaluate", str(best), str(data / "test.xyz"), "--fidelity", "r2scan", "--json", str(data / "m.json")])
        == 0
    )
    metrics = json.loads((data / "m.json").read_text())
    assert metrics["r2scan"]["forces"]["mae"] == pytest.approx(history["test"]["r2scan"]["forces"]["mae"], rel=1e-5)
    assert metrics["r2scan"]["energy"]["count"] == 4
    _refused(["evaluate", str(best), str(data / "test.xyz")], "choose one with --fidelity")


def test_predict_writes_what_mfwrap_predict_returns_in_ase_units(data, capsys):
    """Energies, forces, stress (ASE eV/Å^3 Voigt, the sign of mfwrap.Calculator) and magmoms read
    back from the written file, under mfwrap_energy / _forces / _stress / _magmoms, equal
    mfwrap.predict's on the same checkpoint; a molecule gets no stress."""
    assert main(["train", str(_config(data))]) == 0
    best = data / "out" / "multi_fidelity" / "best.pt"
    molecule = Atoms([26, 8, 3], positions=[[0, 0, 0], [1.8, 0, 0], [0, 1.9, 0.3]])
    structures = [*random_structures(3, 7), molecule]
    ase.io.write(data / "in.xyz", structures, format="extxyz")
    capsys.readouterr()
    assert (
        main(["predict", str(best), str(data / "in.xyz"), "--fidelity", "r2scan", "--output", str(data / "pred.xyz")])
        == 0
    )
    printed = capsys.readouterr().out
    assert f"4 structures from {data / 'in.xyz'}, predicted at fidelity 'r2scan':" in printed
    written = ase.io.read(data / "pred.xyz", index=":")

    model = mfwrap.load(best)
    structures = ase.io.read(data / "in.xyz", index=":")  # the positions predict read (8 decimals)
    expected = mfwrap.predict(model, structures, fidelity="r2scan")
    other = mfwrap.predict(model, structures, fidelity="pbe")
    assert abs(expected[0]["energy"] - other[0]["energy"]) > 1e-4  # so the fidelity asked for matters
    assert len(written) == len(structures)
    for atoms, source, reference in zip(written, structures, expected):
        np.testing.assert_allclose(atoms.positions, source.positions, atol=0)
        assert atoms.info["mfwrap_energy"] == pytest.approx(reference["energy"], rel=1e-12, abs=1e-12)
        assert f"E = {reference['energy']:.6f} eV" in printed
        np.testing.assert_allclose(atoms.arrays["mfwrap_forces"], reference["forces"], atol=1e-7)
        np.testing.assert_allclose(atoms.arrays["mfwrap_magmoms"], reference["magmoms"], atol=1e-7)
        assert atoms.calc is None  # the input had no labels, and predictions are not put in their place
    for atoms, reference in zip(written[:3], expected[:3]):
        assert np.abs(reference["stress"]).max() > 1e-2
        symmetric = (reference["stress"] + reference["stress"].T) / 2  # float32: asymmetric by ~1e-8 GPa
        stress = voigt_6_to_full_3x3_stress(atoms.info["mfwrap_stress"])
        np.testing.assert_allclose(stress * EV_PER_A3_TO_GPA, symmetric, rtol=1e-6, atol=1e-8)
        live = atoms.copy()  # ASE's sign and units, checked against the strain derivative in test_calculator
        live.calc = mfwrap.Calculator(model, fidelity="r2scan")
        np.testing.assert_allclose(atoms.info["mfwrap_stress"], live.get_stress(), rtol=1e-5, atol=1e-7)
    assert not written[3].pbc.any() and "mfwrap_stress" not in written[3].info


def test_ctrl_c_during_train_says_how_to_resume_and_the_command_does(data, monkeypatch, capsys):
    """Ctrl-C (KeyboardInterrupt) in the third optimiser step: one line naming the command that
    resumes, status 130; that command finishes the run."""
    steps = []
    real_step = trainer_module.Trainer.train_step

    def step(self, *args, **kwargs):
        steps.append(1)
        if len(steps) == 3:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(trainer_module.Trainer, "train_step", step)
    config, out = _config(data), data / "elsewhere"
    with pytest.raises(SystemExit) as exited:
        main(["train", str(config), "--output-dir", str(out)])
    assert exited.value.code == 130
    message = capsys.readouterr().err
    assert "Traceback" not in message and message.count("\n") == 1
    expected = f"mfwrap train: interrupted; resume with: mfwrap train {config} --resume --output-dir {out}\n"
    assert message == expected
    argv = shlex.split(message.partition("resume with: ")[2])
    assert argv[0] == "mfwrap" and main(argv[1:]) == 0
    assert (out / "multi_fidelity" / "best.pt").is_file()


def _state(path):
    return read_payload(path)["state_dict"]


def test_output_dir_overrides_the_config_and_resume_continues_an_interrupted_run(data, monkeypatch, capsys):
    """--output-dir wins over train.output_dir; --resume after an interruption takes only the missing
    optimiser steps and ends with the weights of an uninterrupted run; a finished run is not retrained."""
    config = _config(data)
    steps = []
    real_step, real_fit = trainer_module.Trainer.train_step, trainer_module.Trainer.fit
    monkeypatch.setattr(
        trainer_module.Trainer,
        "train_step",
        lambda self, *args, **kwargs: steps.append(1) or real_step(self, *args, **kwargs),
    )

    whole, parts = data / "whole", data / "parts"
    assert main(["train", str(config), "--output-dir", str(whole), "--resume"]) == 0  # nothing to resume: a fresh run
    assert f"outputs in {whole / 'multi_fidelity'}" in capsys.readouterr().out
    total, steps[:] = len(steps), []
    assert total > 3 and (whole / "multi_fidelity" / "best.pt").is_file()

    with monkeypatch.context() as patch:  # interrupted after 3 optimiser steps (in epoch 0)
        patch.setattr(
            trainer_module.Trainer,
            "fit",
            lambda self, *args, **kwargs: real_fit(self, *args, stop_after_steps=3, **kwargs),
        )
        assert main(["train", str(config), "--output-dir", str(parts)]) == 0
    assert len(steps) == 3 and read_payload(parts / "multi_fidelity" / "last.pt")["global_step"] == 3
    assert not (parts / "multi_fidelity" / "best.pt").exists()
    interrupted = _state(parts / "multi_fidelity" / "last.pt")

    steps[:] = []
    assert main(["train", str(config), "--output-dir", str(parts), "--resume"]) == 0
    assert len(steps) == total - 3
    for name in ("last.pt", "best.pt"):
        resumed, reference = _state(parts / "multi_fidelity" / name), _state(whole / "multi_fidelity" / name)
        for key in reference:
            torch.testing.assert_close(resumed[key], reference[key], rtol=0, atol=1e-7)
    finished = _state(whole / "multi_fidelity" / "last.pt")
    assert any(not torch.equal(interrupted[k], finished[k]) for k in finished)  # the resumption did the rest
    assert not (data / "out").exists()  # the config's output_dir was never used

    steps[:] = []
    assert main(["train", str(config), "--output-dir", str(whole), "--resume"]) == 0
    assert steps == []  # finished: only re-evaluated
    changed = _config(data, train=", lr: 0.001", name="changed.yaml")
    _refused(["train", str(changed), "--output-dir", str(parts), "--resume"], r"cannot resume .*\['lr'\]")


def test_lmfp_data_section(tmp_path, monkeypatch, capsys):
    """data: {lmfp: ...} trains on the packaged LMFP set, installed into $MFWRAP_CACHE, with the
    requested numbers of low / high / validation frames; tested on the 50 held-out high frames."""
    monkeypatch.setenv("MFWRAP_CACHE", str(tmp_path / "cache"))
    config = tmp_path / "lmfp.yaml"
    config.write_text(f"""
model: {TINY}
data: {{lmfp: {{size: small, n_low: 6, n_high: 4, n_val: 2}}}}
train: {{epochs: 1, output_dir: {tmp_path / "out"}, progress: false}}
""")
    assert main(["train", str(config)]) == 0
    assert "test errors at fidelity 'high'" in capsys.readouterr().out
    assert (tmp_path / "cache" / "lmfp" / "v1-small-seed0" / "manifest.json").is_file()
    run = tmp_path / "out" / "multi_fidelity"
    last = read_payload(run / "last.pt")
    assert (
        last["num_train"] == 6 + 4 and last["fidelity_names"] == ["low", "high"] and last["target_fidelity"] == "high"
    )
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["val"]["high"]["energy"]["count"] == 2 and set(summary["val"]) == {"high"}
    assert summary["test"]["high"]["energy"]["count"] == 50 and "magmoms" in summary["test"]["high"]


def test_a_pretrained_backbone_is_read_once_per_train(data, monkeypatch):
    """The graphs are made with the graph_spec of the backbone that trains: no throwaway copy."""
    weights = data / "pretrained.pt"
    torch.save(TinyBackbone(features=8, seed=3).state_dict(), weights)
    reads = []

    def from_pretrained(cls, name):
        reads.append(name)
        model = cls(features=8)
        model.load_state_dict(torch.load(name))
        return model

    monkeypatch.setattr(TinyBackbone, "from_pretrained", classmethod(from_pretrained), raising=False)
    config = _config(data, method="single_fidelity")
    config.write_text(config.read_text().replace("kwargs: {features: 8}", f'pretrained: "{weights}"'))
    assert "pretrained:" in config.read_text()
    assert main(["train", str(config)]) == 0
    assert reads == [str(weights)]


def test_li3ps4_data_section(tmp_path, capsys):
    """data: {li3ps4: ...}: the shipped DFT set, split as the suite splits it; its fidelity names."""
    config = tmp_path / "li3ps4.yaml"
    config.write_text(f"""
model: {TINY}
data: {{li3ps4: {{seed: 1, n_high: 5, n_low: 12}}}}
train: {{epochs: 1, targets: ef, output_dir: {tmp_path / "out"}, progress: false}}
""")
    assert main(["train", str(config)]) == 0
    assert "test errors at fidelity 'r2scan'" in capsys.readouterr().out
    last = read_payload(tmp_path / "out" / "multi_fidelity" / "last.pt")
    assert last["num_train"] == 5 + 12 and last["fidelity_names"] == ["pbesol", "r2scan"]
    summary = json.loads((tmp_path / "out" / "multi_fidelity" / "metrics.json").read_text())
    assert summary["val"]["r2scan"]["energy"]["count"] == 10 and summary["test"]["r2scan"]["energy"]["count"] == 10
    config.write_text(config.read_text().replace("seed: 1", "seed: 1, n_val: 3"))
    _refused(["train", str(config), "--overwrite"], "dataset 'li3ps4' ships its validation frames; leave n_val out")
    config.write_text(config.read_text().replace("li3ps4:", "li3ps5:"))
    _refused(["train", str(config)], r"data: unknown key\(s\) \['li3ps5'\]; known are .* or a dataset of \['li3ps4'")


@pytest.mark.parametrize(
    "method, fidelities, train, extra",
    [
        # the target (r2scan, set in train) is not the last name, so the default must come from the checkpoint
        ("single_fidelity", "[r2scan, pbe]", ", target_fidelity: r2scan", ""),
        ("delta", "[pbe, r2scan]", "", "delta_reference: model\npretrain: {epochs: 1}"),
    ],
)
def test_single_fidelity_and_delta_checkpoints_default_to_their_target_fidelity(
    data, capsys, method, fidelities, train, extra
):
    config = _config(data, method=method, fidelities=fidelities, train=train, extra=extra)
    assert main(["train", str(config)]) == 0
    best = data / "out" / method / "best.pt"
    history = json.loads((best.parent / "metrics.json").read_text())
    assert set(history["test"]) == {"r2scan"}
    capsys.readouterr()

    assert main(["evaluate", str(best), str(data / "test.xyz"), "--json", str(data / "m.json")]) == 0
    assert "4 structures from" in capsys.readouterr().out
    metrics = json.loads((data / "m.json").read_text())
    assert set(metrics) == {"r2scan"}
    for target in ("energy", "forces", "stress", "magmoms"):
        assert metrics["r2scan"][target]["mae"] == pytest.approx(history["test"]["r2scan"][target]["mae"], rel=1e-5)
    _refused(["evaluate", str(best), str(data / "test.xyz"), "--fidelity", "hse"], "unknown fidelity 'hse'")
    for command in ("evaluate", "predict"):  # a fidelity of the run that the model was not trained for
        _refused(
            [command, str(best), str(data / "test.xyz"), "--fidelity", "pbe"],
            "single-fidelity model of fidelity 'r2scan'; it does not predict 'pbe'",
        )

    assert main(["predict", str(best), str(data / "test.xyz"), "--output", str(data / "pred.xyz")]) == 0
    written = ase.io.read(data / "pred.xyz", index=":")
    expected = mfwrap.predict(mfwrap.load(best), random_structures(4, 2))
    for atoms, reference in zip(written, expected, strict=True):
        assert atoms.info["mfwrap_energy"] == pytest.approx(reference["energy"], rel=1e-12, abs=1e-12)
        np.testing.assert_allclose(atoms.arrays["mfwrap_forces"], reference["forces"], atol=1e-7)


def test_missing_and_foreign_checkpoints_are_refused_with_a_clear_message(data):
    structures = str(data / "test.xyz")
    for command in ("evaluate", "predict"):
        _refused([command, str(data / "nothing.pt"), structures], r"nothing\.pt: no such file")
    torch.save(TinyBackbone().state_dict(), data / "weights.pt")  # a torch file, but only a state dict
    torch.save(torch.zeros(3), data / "tensor.pt")
    for name in ("weights.pt", "tensor.pt"):
        for command in ("evaluate", "predict"):
            _refused([command, str(data / name), structures], rf"{name}: not an mfwrap model file or checkpoint")
    _refused(["predict", structures, str(data / "test.xyz")], r"test\.xyz: not a readable torch file")  # swapped
    save_model(torch.nn.Linear(2, 2), data / "bare.pt")  # weights without an architecture
    _refused(["predict", str(data / "bare.pt"), structures], r"bare\.pt: the file has weights but no architecture")


def refusal(argv) -> str:
    """The one line a refused command prints: a user error names the problem on stderr, exit status 2,
    no traceback."""
    import contextlib
    import io

    stderr = io.StringIO()
    with pytest.raises(SystemExit) as exited, contextlib.redirect_stderr(stderr):
        main(argv)
    assert exited.value.code == 2
    message = stderr.getvalue()
    assert message.startswith(f"mfwrap {argv[0]}: error: "), message
    assert "Traceback" not in message and message.count("\n") == 1, message
    return message


def _refused(argv, pattern):
    """:func:`refusal`, its line matching ``pattern``."""
    message = refusal(argv)
    assert re.search(rf"^mfwrap {argv[0]}: error: .*{pattern}", message), message


def test_help_explains_every_option():
    parser = build_parser()
    for command in ("train", "evaluate", "predict"):
        sub = parser._subparsers._group_actions[0].choices[command]
        for action in sub._actions:
            assert action.help, f"{command}: option {action.dest} has no help"
    train_help = parser._subparsers._group_actions[0].choices["train"].format_help()
    assert "delta_reference" in train_help and "mechanisms" in train_help and "lmfp" in train_help


def test_train_help_lists_every_config_option_with_its_type_and_real_default(monkeypatch):
    import dataclasses

    from mfwrap.cli import _yaml, config_help
    from mfwrap.datasets.registry import Split
    from mfwrap.replay import ReplayConfig
    from mfwrap.train.baselines import Experiment, ModelConfig
    from mfwrap.train.config import TrainConfig, field_docs
    from mfwrap.train.data import DataConfig, Source

    text = " ".join(config_help().split())  # one space between words: wrapping aside
    for cls in (Experiment, ModelConfig, TrainConfig, DataConfig, Source, Split, ReplayConfig):
        for doc in field_docs(cls):
            if cls is DataConfig and doc.name in ("dataset", "split"):
                continue  # written in YAML as <dataset name>: {<Split options>}, listed with Split
            section = cls is Experiment and doc.name in ("model", "train", "replay")  # listed option by option below
            required = doc.default is dataclasses.MISSING
            default = "(required) " if required else "" if section else _yaml(doc.default) + " "
            words = " ".join(doc.help.replace("``", "").split()[:3])
            assert f" {doc.name}: {default}({doc.type}) {words}" in text, (cls, doc.name)
    assert " loss_weights: {energy: 1.0, forces: 1.0, stress: 0.1, magmoms: 0.1} (LossWeights)" in text
    assert " n_val: null (int | None)" in text and "li3ps4" in text and "lmfp-gap50" in text
    monkeypatch.setattr(TrainConfig.__dataclass_fields__["epochs"], "default", 61)
    assert " epochs: 61 (int) passes over the training set." in " ".join(config_help().split())


def test_a_config_field_without_a_description_is_refused():
    from mfwrap.train.config import field_docs

    @dataclasses.dataclass
    class Options:
        """Options.

        Attributes:
            depth: how deep; continued
                on a second line. Then more.
        """

        depth: int = 3
        width: int = 2

    with pytest.raises(ValueError, match=r"Options: fields \['width'\] have no entry in the docstring's Attributes"):
        field_docs(Options)
    Options.__dataclass_fields__.pop("width")
    (depth,) = field_docs(Options)
    expected = ("depth", "int", 3, "how deep; continued on a second line.")
    assert (depth.name, depth.type, depth.default, depth.help) == expected


def test_bench_plan_prints_steps_and_hours_and_runs_nothing(tmp_path, capsys):
    assert (
        main(
            [
                "bench",
                "learning_curve",
                "--level",
                "medium",
                "--seeds",
                "0",
                "--plan",
                "--jobs",
                "2",
                "--seconds-per-step",
                "2.0",
                "--root",
                str(tmp_path / "runs"),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    row = next(line for line in printed.splitlines() if line.startswith("learning_curve"))
    runs, trained, steps, pretrain, rate, hours, done, done_hours, left_hours = row.split()[1:]
    # medium, seed 0: MF + SF at N_high 25/50/90 (paper), SF at MF's steps, converged MF + SF at 25 and 90
    assert (int(runs), int(trained), int(pretrain), rate, int(done), float(done_hours)) == (13, 13, 0, "2.00*", 0, 0.0)
    assert float(hours) == round(int(steps) * 2.0 / 2 / 3600, 1)
    assert left_hours == hours  # nothing finished: all of it is left
    assert not (tmp_path / "runs").exists()
