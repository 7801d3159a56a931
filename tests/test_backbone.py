"""The backbone contract (mfwrap.backbone): its worked example runs as documented, violations are named."""

from __future__ import annotations

import sys
import textwrap
import types

import numpy as np
import pytest
import torch
from torch import nn

import mfwrap
from mf_models import batch_of, evaluate, perturb, random_crystal
from mfwrap import MultiFidelity
from mfwrap.backbone import Backbone, check_backbone
from mfwrap.data.graph import GraphSpec
from mfwrap.train import TrainConfig, Trainer


def _example_module() -> types.ModuleType:
    """The worked example of the module docstring, executed as an importable module."""
    doc = mfwrap.backbone.__doc__
    code = doc[doc.index("Worked example") :].split("::\n", 1)[1]
    code = textwrap.dedent(code.split("\nThen ")[0])
    module = types.ModuleType("pairnet_example")
    sys.modules[module.__name__] = module
    exec(compile(code, "mfwrap.backbone docstring", "exec"), module.__dict__)
    mfwrap.register_architecture_module(module.__name__)  # as the docstring says for one's own module
    return module


PairNet = _example_module().PairNet


def test_the_worked_example_wraps_trains_saves_and_loads(tmp_path):
    backbone = PairNet()
    assert isinstance(backbone, Backbone)
    mf = MultiFidelity(backbone, ["pbe", "r2scan"], "ECMR")
    assert {m for m, *_ in mf.surgery.places} == set("ECMR") and mf.surgery.spec_source == "backbone"
    rng = np.random.default_rng(0)
    batch = batch_of([random_crystal(rng) for _ in range(3)], backbone.graph_spec, [0, 1, 1])
    for key, value in evaluate(backbone, batch).items():  # identity at initialisation
        np.testing.assert_allclose(evaluate(mf, batch)[key], value, rtol=1e-5, atol=1e-5)
    perturb(mf, "ECMR")
    mf.save(tmp_path / "pairnet.pt")
    loaded = mfwrap.load(tmp_path / "pairnet.pt")
    for key, value in evaluate(mf, batch).items():
        np.testing.assert_array_equal(evaluate(loaded, batch)[key], value)
    graphs = batch.to_data_list()
    for graph, energy in zip(graphs, (-10.0, -12.0, -11.0)):
        graph["energy"], graph["energy_mask"] = torch.tensor([energy]), torch.tensor([True])
        for target, size in (("forces", (graph.num_nodes, 3)), ("stress", (1, 3, 3)), ("magmoms", (graph.num_nodes,))):
            graph[target], graph[f"{target}_mask"] = torch.zeros(size), torch.zeros(size[0], dtype=torch.bool)
    config = TrainConfig(
        epochs=1, batch_size=2, val_fraction=0.0, output_dir=str(tmp_path / "run"), progress=False, targets="e"
    )
    Trainer(mf, config).fit(graphs)
    assert (tmp_path / "run" / "best.pt").is_file()


class _NoGraphSpec(nn.Module):
    def forward(self, batch):
        return {"energy": torch.zeros(1)}


class _PerAtomEnergy(PairNet):
    def forward(self, batch):
        return {"energy": torch.zeros(batch.num_nodes)}


def test_contract_violations_are_named():
    with pytest.raises(TypeError, match="_NoGraphSpec is not an mfwrap backbone: it has no graph_spec"):
        MultiFidelity(_NoGraphSpec(), ["a", "b"], "E")
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        check_backbone(GraphSpec(4.0))
    with pytest.raises(TypeError, match=r"returned 'energy' of shape \(7,\); expected \(2,\)"):
        MultiFidelity(_PerAtomEnergy(), ["a", "b"], "E")
