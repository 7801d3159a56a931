"""``mfwrap evaluate --against REFERENCE``: errors against another model's predictions (forgetting), on a
file or on the diverse set of held-out prototypes."""

import json

import ase.io
import numpy as np
import pytest
from test_cli import _refused

import mfwrap
from mf_models import random_crystal, small_backbone
from mfwrap.cli import main


def _saved(path, seed):
    mfwrap.save(small_backbone("chgnet", seed=seed), path)
    return path


@pytest.fixture
def models(tmp_path):
    return _saved(tmp_path / "a.pt", 0), _saved(tmp_path / "b.pt", 1)


def test_errors_against_a_reference_are_the_differences_of_their_predictions(tmp_path, models, capsys):
    rng = np.random.default_rng(0)
    structures = [random_crystal(rng, max_atoms=5) for _ in range(3)]
    ase.io.write(tmp_path / "s.xyz", structures, format="extxyz")  # no labels: the reference gives them
    for reference, out in ((models[0], "self.json"), (models[1], "m.json")):
        argv = ["evaluate", str(models[0]), str(tmp_path / "s.xyz"), "--against", str(reference)]
        assert main([*argv, "--json", str(tmp_path / out)]) == 0
    assert f"against the predictions of {models[1]}" in capsys.readouterr().out
    mine, theirs = (mfwrap.predict(mfwrap.load(m), ase.io.read(tmp_path / "s.xyz", ":")) for m in models)
    forces = np.concatenate([np.abs(a["forces"] - b["forces"]).ravel() for a, b in zip(mine, theirs)])
    metrics = json.loads((tmp_path / "m.json").read_text())["default"]
    assert metrics["forces"]["mae"] == pytest.approx(1000 * forces.mean(), rel=1e-4)  # meV/Å
    assert metrics["forces"]["mae"] > 1.0
    assert json.loads((tmp_path / "self.json").read_text())["default"]["forces"]["mae"] == 0.0


def test_the_diverse_set_needs_a_reference_which_labels_it(tmp_path, models, capsys):
    _refused(["evaluate", str(models[0]), "diverse:4"], "the diverse set has no labels of its own; give --against")
    _refused(["evaluate", str(models[0]), "diverse:x", "--against", str(models[1])], "write the diverse set as")
    assert main(["evaluate", str(models[0]), "diverse:4", "--against", str(models[1])]) == 0
    assert "4 structures from diverse:4 at fidelity 'default', against the predictions of" in capsys.readouterr().out
