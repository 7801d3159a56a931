"""The mfwrap command under user mistakes: predict never writes onto an input and keeps the labels
beside its predictions; evaluate refuses a key no frame has and a file with nothing to evaluate;
empty or unknown files, a directory as checkpoint and a device the machine lacks each end in one
line saying what to do, never a traceback (Ctrl-C during train: in test_cli)."""

import json
import os
import re
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase.build import bulk

import mfwrap
from mfwrap.cli import main
from mfwrap.model_file import save_model

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent / "train"))
from test_cli import _refused, _write  # noqa: E402
from tiny_backbone import TinyBackbone  # noqa: E402


@pytest.fixture
def files(tmp_path):
    """model.pt (an untrained tiny backbone for fidelity 'dft') and t.xyz (4 frames labelled under the
    standard keys: energy, forces, stress, magmoms)."""
    save_model(TinyBackbone(seed=0), tmp_path / "model.pt", fidelity_names=["dft"], target_fidelity="dft")
    _write(tmp_path / "t.xyz", 4, 2, 0)
    return tmp_path


def _evaluate(files, labelled, *options):
    out = files / "metrics.json"
    out.unlink(missing_ok=True)
    assert main(["evaluate", str(files / "model.pt"), str(labelled), "--json", str(out), *options]) == 0
    return json.loads(out.read_text())["dft"]


def test_predict_refuses_to_write_onto_an_input_and_the_input_is_unchanged(files):
    """--output naming the structures (directly, by a symlink or a hardlink) or the checkpoint is
    refused, even with --overwrite, and so is evaluate's --json; the files keep their bytes."""
    model, structures = files / "model.pt", files / "t.xyz"
    before = {path: path.read_bytes() for path in (model, structures)}
    (files / "link.xyz").symlink_to(structures)
    os.link(structures, files / "hard.xyz")
    for output, input in [("t.xyz", "t.xyz"), ("link.xyz", "t.xyz"), ("hard.xyz", "t.xyz"), ("model.pt", "model.pt")]:
        for overwrite in ([], ["--overwrite"]):
            argv = ["predict", str(model), str(structures), "--output", str(files / output), *overwrite]
            _refused(argv, rf"--output .*{re.escape(output)}: is the input .*{re.escape(input)}; refused")
    for output in ("link.xyz", "model.pt"):  # nor evaluate's --json
        _refused(["evaluate", str(model), str(structures), "--json", str(files / output)], "is the input .*; refused")
    assert {path: path.read_bytes() for path in before} == before


def test_predict_refuses_an_existing_output_unless_overwrite(files):
    model, structures, output = files / "model.pt", files / "t.xyz", files / "old.xyz"
    output.write_text("results of yesterday\n")
    argv = ["predict", str(model), str(structures), "--output", str(output)]
    _refused(argv, r"old\.xyz: exists; pass --overwrite to replace it")
    assert output.read_text() == "results of yesterday\n"
    assert main([*argv, "--overwrite"]) == 0
    assert len(ase.io.read(output, index=":")) == 4
    _refused(["predict", str(model), str(structures), "--output", str(files)], "is a directory; give a file name")


def test_predictions_go_under_their_own_keys_beside_the_labels(files):
    """The written frames keep their labels under the standard keys, so evaluate reads the file as it
    reads the input; the predictions, under mfwrap_* (or --prefix), evaluate to zero error."""
    model, structures = files / "model.pt", files / "t.xyz"
    assert main(["predict", str(model), str(structures), "--output", str(files / "p.xyz")]) == 0
    source, written = ase.io.read(structures, index=":"), ase.io.read(files / "p.xyz", index=":")
    expected = mfwrap.predict(mfwrap.load(model), source)
    for atoms, labelled, prediction in zip(written, source, expected, strict=True):
        for key, value in labelled.calc.results.items():
            np.testing.assert_array_equal(atoms.calc.results[key], value)
        assert atoms.info["mfwrap_energy"] == pytest.approx(prediction["energy"], rel=1e-12)
        assert abs(atoms.info["mfwrap_energy"] - labelled.get_potential_energy()) > 1e-3  # not the label
        np.testing.assert_allclose(atoms.arrays["mfwrap_forces"], prediction["forces"], atol=1e-7)
        assert atoms.info["mfwrap_stress"].shape == (6,) and atoms.arrays["mfwrap_magmoms"].shape == (len(atoms),)

    assert _evaluate(files, files / "p.xyz") == _evaluate(files, structures)  # the labels, unchanged
    options = [f"--{t}-key=mfwrap_{t}" for t in ("energy", "forces", "stress", "magmoms")]
    against_themselves = _evaluate(files, files / "p.xyz", *options)
    assert set(against_themselves) == {"energy", "forces", "stress", "magmoms"}
    assert all(row["mae"] < 1e-5 for row in against_themselves.values())

    # predicting the written file again would replace its predictions: another prefix, or refused
    assert main(["predict", str(model), str(files / "p.xyz"), "--output", str(files / "q.xyz"), "--prefix", "v2_"]) == 0
    again = ase.io.read(files / "q.xyz", index=0)
    assert again.info["v2_energy"] == pytest.approx(again.info["mfwrap_energy"], rel=1e-12)
    _refused(
        ["predict", str(model), str(files / "p.xyz"), "--output", str(files / "r.xyz")],
        r"p\.xyz: frame 0 already has \['mfwrap_energy', .*\]; choose another --prefix",
    )
    _refused(
        ["predict", str(model), str(structures), "--output", str(files / "r.xyz"), "--prefix", ""],
        r"t\.xyz: frame 0 already has \['energy', 'forces', 'magmoms', 'stress'\]; choose another --prefix",
    )
    assert not (files / "r.xyz").exists()


def test_evaluate_refuses_a_key_no_frame_has(files):
    """A typo in a key named on the command line is an error naming the key, the file and the keys the
    frames have (it used to drop energy from the table with status 0)."""
    _refused(
        ["evaluate", str(files / "model.pt"), str(files / "t.xyz"), "--energy-key", "enrgy"],
        r"t\.xyz: no frame has energy of 'dft' under 'enrgy'; the frames have calculator results "
        r"\['energy', 'forces', 'magmoms', 'stress'\]; check the key names \(--energy-key, ",
    )
    # a standard name the file lacks is not an error: it is read where present
    frames = ase.io.read(files / "t.xyz", index=":")
    for atoms in frames:
        del atoms.calc.results["stress"]
    ase.io.write(files / "no_stress.xyz", frames, format="extxyz")
    assert set(_evaluate(files, files / "no_stress.xyz")) == {"energy", "forces", "magmoms"}


def test_evaluate_with_nothing_to_evaluate_is_an_error(files):
    """A file without labels under the keys looked for (here: its energies under another name) is an
    error naming the keys looked for and those the frames have, not "0 structures" with status 0."""
    frames = [bulk("Fe", "bcc", a=2.87, cubic=True) for _ in range(3)]
    for i, atoms in enumerate(frames):
        atoms.info["r2scan_energy"] = -8.0 + i
    ase.io.write(files / "other.xyz", frames, format="extxyz")
    _refused(
        ["evaluate", str(files / "model.pt"), str(files / "other.xyz")],
        r"other\.xyz: no frame with a label at fidelity 'dft': looked for energy under 'energy', forces under "
        r"'forces', stress under 'stress', magmoms under 'magmoms'; the frames have info \['r2scan_energy'\]",
    )
    assert _evaluate(files, files / "other.xyz", "--energy-key", "r2scan_energy")["energy"]["count"] == 3


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_empty_unknown_and_directory_inputs_are_one_line(files, command):
    model = str(files / "model.pt")
    (files / "empty.xyz").write_text("")
    (files / "notes.txt").write_text("relaxed with PBE, 520 eV\n")
    _refused([command, model, str(files / "empty.xyz")], r"empty\.xyz: the file is empty; it holds no structures")
    _refused([command, model, str(files / "notes.txt")], r"notes\.txt: ase.io cannot tell the format of this file")
    _refused([command, model, str(files)], r"is a directory, not a structure file")
    run = files / "run"
    run.mkdir()
    (run / "best.pt").write_bytes((files / "model.pt").read_bytes())
    hint = rf"{re.escape(str(run))}: is a directory; give a file in it, e\.g\. .*best\.pt"
    _refused([command, str(run), str(files / "t.xyz")], hint)  # a run's directory as checkpoint: names its file


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_a_device_the_machine_lacks_is_one_line(files, monkeypatch, command):
    argv = [command, str(files / "model.pt"), str(files / "t.xyz")]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _refused([*argv, "--device", "cuda"], "--device cuda: torch sees no CUDA GPU on this machine; use --device cpu")
    _refused([*argv, "--device", "gpu"], "--device gpu: not a device; use auto, cpu, cuda or cuda:N")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    _refused([*argv, "--device", "cuda:2"], r"--device cuda:2: torch sees 2 GPU\(s\), cuda:0 to cuda:1")
