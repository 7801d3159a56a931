"""Resuming continues the same run only: changed data, options, model or method options are an error
naming what changed and how to proceed."""

import dataclasses

import pytest
import torch
from tiny_backbone import TinyBackbone, labelled_graphs

from mfwrap.data import keys as K
from mfwrap.model_file import read_payload
from mfwrap.train import TrainConfig, Trainer
from mfwrap.train.baselines import Experiment, run_experiment
from mfwrap.train.checkpoint import data_fingerprint

SPEC = TinyBackbone().graph_spec
TRAIN = labelled_graphs(12, 0, 0, SPEC)
VAL = labelled_graphs(4, 1, 0, SPEC)
HOW = "Start a new output_dir, or retrain from scratch here"


def _config(tmp_path, **overrides):
    return TrainConfig(**{"epochs": 2, "batch_size": 4, "output_dir": str(tmp_path), "progress": False, **overrides})


def _shifted(graphs, ev: float):
    """Copies with every energy label moved by ``ev`` (same frames, same count)."""
    copies = [g.clone() for g in graphs]
    for g in copies:
        g[K.ENERGY] = g[K.ENERGY] + ev
    return copies


def test_the_fingerprint_sees_every_label_and_its_order():
    reference = data_fingerprint(TRAIN)
    assert data_fingerprint([g.clone() for g in TRAIN]) == reference
    assert data_fingerprint(_shifted(TRAIN, 2.0)) != reference
    assert data_fingerprint(TRAIN[::-1]) != reference
    masked = [g.clone() for g in TRAIN]
    masked[3][K.mask_key(K.FORCES)] = torch.zeros_like(masked[3][K.mask_key(K.FORCES)])
    assert data_fingerprint(masked) != reference
    assert data_fingerprint(None) == data_fingerprint([])


@pytest.mark.parametrize("split", ["train", "val"])
def test_resume_refuses_changed_data(tmp_path, split):
    """The trial: energies shifted by 2 eV, same frame count, resumed with rc 0 and no warning."""
    Trainer(TinyBackbone(seed=0), _config(tmp_path)).fit(TRAIN, VAL, stop_after_steps=2)
    train, val = (_shifted(TRAIN, 2.0), VAL) if split == "train" else (TRAIN, _shifted(VAL, 2.0))
    with pytest.raises(ValueError, match=f"cannot resume .*last.pt.*the {split} data changed.*{HOW}"):
        Trainer(TinyBackbone(seed=0), _config(tmp_path)).fit(train, val, resume=True)


def test_resume_names_changed_options_with_their_values_and_allows_free_ones(tmp_path):
    Trainer(TinyBackbone(seed=0), _config(tmp_path)).fit(TRAIN, VAL, stop_after_steps=2)
    with pytest.raises(ValueError, match=r"the options \['epochs', 'lr'\] changed \(epochs: 2 → 3; lr: 0.005 → 0.1\)"):
        Trainer(TinyBackbone(seed=0), _config(tmp_path, lr=0.1, epochs=3)).fit(TRAIN, VAL, resume=True)
    free = _config(tmp_path, checkpoint_every=1, eval_batch_size=3)  # they change no weight
    assert Trainer(TinyBackbone(seed=0), free).fit(TRAIN, VAL, resume=True)["stopped"] is False


def test_resume_after_a_model_change_is_a_clear_error(tmp_path):
    Trainer(TinyBackbone(features=8, seed=0), _config(tmp_path)).fit(TRAIN, VAL, stop_after_steps=2)
    with pytest.raises(ValueError, match=r"the model's architecture changed \(config.features: 8 → 16\).*" + HOW):
        Trainer(TinyBackbone(features=16, seed=0), _config(tmp_path)).fit(TRAIN, VAL, resume=True)


def test_resume_of_a_model_without_architecture_with_other_weights_is_a_clear_error(tmp_path):
    """Without an architecture to compare, a load_state_dict size mismatch still ends in the same error."""

    def undescribed(features):
        model = TinyBackbone(features=features, seed=0)
        del model.config
        return model

    Trainer(undescribed(8), _config(tmp_path)).fit(TRAIN, VAL, stop_after_steps=2)
    assert read_payload(tmp_path / "last.pt")["architecture"] is None
    with pytest.raises(ValueError, match=r"cannot resume .*the model's weights do not fit it \(.*size mismatch"):
        Trainer(undescribed(16), _config(tmp_path)).fit(TRAIN, VAL, resume=True)


def test_resume_refuses_a_changed_experiment_option(tmp_path):
    """The trial: model.fidelity_init changed between the run and its resumption."""
    low, high = labelled_graphs(8, 0, 0, SPEC, magmoms=False), labelled_graphs(8, 1, 1, SPEC)
    train = TrainConfig(epochs=1, batch_size=4, output_dir=str(tmp_path), progress=False, seed=0)
    model = {"backbone": "tiny_backbone:TinyBackbone", "kwargs": {"features": 8}}
    experiment = Experiment(method="multi_fidelity", model=model, train=train)
    run_experiment(experiment, ["low", "high"], low + high)
    assert run_experiment(experiment, ["low", "high"], low + high, resume=True)["stopped"] is False  # unchanged
    changed = dataclasses.replace(experiment, model=dataclasses.replace(experiment.model, fidelity_init="random"))
    with pytest.raises(ValueError, match=r"the run's configuration changed \(model.fidelity_init: 'zero' → 'random'\)"):
        run_experiment(changed, ["low", "high"], low + high, resume=True)
