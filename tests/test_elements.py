"""A model file records its training data's elements; predict, Calculator and `mfwrap evaluate` warn,
once per model, about structures with elements the model never saw in training."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import ase.io
import pytest
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

import mfwrap
from mfwrap.cli import main as cli_main
from mfwrap.model_file import read_payload, save_model
from mfwrap.train import TrainConfig, Trainer

sys.path.insert(0, str(Path(__file__).parent / "train"))
from tiny_backbone import TinyBackbone, labelled_graphs, random_structures  # noqa: E402

SPEC = TinyBackbone().graph_spec


def _with_copper(seed: int = 5) -> Atoms:
    atoms = random_structures(1, seed)[0]
    atoms.numbers[0] = 29  # Cu: the training data has Li, O and Fe only
    return atoms


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    config = TrainConfig(epochs=1, batch_size=4, output_dir=str(out), progress=False)
    Trainer(TinyBackbone(seed=0), config).fit(labelled_graphs(8, 0, 0, SPEC))
    return out


def _unseen_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "never occurred in this model's training data" in str(w.message)]


def test_checkpoints_record_the_training_elements(trained):
    for name in ("best.pt", "last.pt"):
        assert read_payload(trained / name)["elements"] == [3, 8, 26]


def test_predict_warns_once_per_model_naming_the_unseen_elements(trained):
    model = mfwrap.load(trained / "best.pt")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        mfwrap.predict(model, random_structures(2, 3))  # Li, O, Fe only: no warning
        assert _unseen_warnings(record) == []
        mfwrap.predict(model, [_with_copper(), _with_copper(6)])
        mfwrap.predict(model, _with_copper())
    messages = _unseen_warnings(record)
    assert len(messages) == 1 and "element(s) Cu never occurred" in messages[0] and "(Li, O, Fe)" in messages[0]


def test_the_calculator_warns_once(trained):
    atoms = _with_copper()
    atoms.calc = mfwrap.Calculator(mfwrap.load(trained / "best.pt"))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        atoms.get_potential_energy()
        atoms.positions[0] += 0.05
        atoms.get_potential_energy()
    assert len(_unseen_warnings(record)) == 1


def test_saving_a_loaded_model_keeps_the_record(trained, tmp_path):
    model = mfwrap.load(trained / "best.pt")
    wrapped = mfwrap.MultiFidelity(model, ["pbe", "r2scan"], "EMR")
    wrapped.save(tmp_path / "mf.pt")
    assert read_payload(tmp_path / "mf.pt")["elements"] == [3, 8, 26]


def test_evaluate_warns(trained, tmp_path, capsys):
    atoms = _with_copper()
    atoms.calc = SinglePointCalculator(atoms, energy=-10.0, forces=torch.zeros(4, 3).numpy())
    ase.io.write(tmp_path / "cu.xyz", [atoms], format="extxyz")
    with pytest.warns(UserWarning, match="element\\(s\\) Cu never occurred"):
        assert cli_main(["evaluate", str(trained / "best.pt"), str(tmp_path / "cu.xyz")]) == 0


def test_files_without_a_record_give_no_warning(tmp_path):
    """Files written before the record existed, and models mfwrap never trained, say nothing."""
    save_model(TinyBackbone(seed=0), tmp_path / "old.pt")
    payload = torch.load(tmp_path / "old.pt", weights_only=True)
    assert payload["elements"] is None
    del payload["elements"]  # as a file of an earlier mfwrap
    torch.save(payload, tmp_path / "old.pt")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        mfwrap.predict(mfwrap.load(tmp_path / "old.pt"), _with_copper())
    assert _unseen_warnings(record) == []


def test_a_pretrained_chgnet_gives_no_warning():
    from backbones.chgnet import CHGNet

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        mfwrap.predict(CHGNet.from_pretrained("0.3.0"), _with_copper(), stress=False)
    assert _unseen_warnings(record) == []


def test_a_model_fine_tuned_from_pretrained_weights_gives_no_warning(tmp_path):
    """Its pretraining elements are unknown: a config's model.pretrained marks them so, and files keep the mark."""
    from mfwrap.model_file import ELEMENTS_UNKNOWN
    from mfwrap.train.baselines import ModelConfig

    pretrained = ModelConfig(backbone="backbones.chgnet:CHGNet", pretrained="0.3.0").build_backbone()
    assert pretrained.trained_elements == ELEMENTS_UNKNOWN
    backbone = TinyBackbone(seed=0)
    backbone.trained_elements = ELEMENTS_UNKNOWN
    config = TrainConfig(epochs=1, batch_size=4, output_dir=str(tmp_path), progress=False)
    Trainer(backbone, config).fit(labelled_graphs(8, 0, 0, SPEC))
    assert read_payload(tmp_path / "best.pt")["elements"] == ELEMENTS_UNKNOWN
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        mfwrap.predict(mfwrap.load(tmp_path / "best.pt"), _with_copper())
    assert _unseen_warnings(record) == []
