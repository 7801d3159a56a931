"""torchrun with 2 gloo processes on CPU follows the 1-process trajectory with the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import pytest

from mfwrap import MultiFidelity  # noqa: F401 - the eval()ed model expressions use it
from mfwrap.train import TrainConfig, Trainer
from tiny_backbone import TinyBackbone, labelled_graphs

_SCRIPT = """
import json, sys, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from tiny_backbone import TinyBackbone, labelled_graphs
from mfwrap import MultiFidelity  # noqa: F401 - the eval()ed model expressions use it
from mfwrap.train import TrainConfig, Trainer
from mfwrap.train.distributed import DistributedContext
from mfwrap import MultiFidelity
spec = TinyBackbone().graph_spec
train = labelled_graphs(12, 0, 0, spec) + labelled_graphs(8, 2, 1, spec, magmoms=False)
val = labelled_graphs(6, 1, 1, spec, magmoms=False)
model = {model}
trainer = Trainer(model, TrainConfig(**{config!r}), fidelity_names=["low", "high"])
result = trainer.fit(train, val)
if DistributedContext.from_env().is_main:
    torch.save(model.state_dict(), {weights!r})
    json.dump(result["val"], open({metrics!r}, "w"))
"""


def _config(out):
    return dict(epochs=2, batch_size=4, output_dir=str(out), progress=False, seed=1, grad_clip=10.0)


# Plain backbone; and the wrapper, whose per-fidelity readout copies go unused in some processes.
MODELS = {"backbone": "TinyBackbone(seed=0)",
          "multi_fidelity": "MultiFidelity(TinyBackbone(seed=0), ['low', 'high'], 'ECMR')"}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_two_gloo_processes_equal_one_process(tmp_path, kind):
    spec = TinyBackbone().graph_spec
    train = labelled_graphs(12, 0, 0, spec) + labelled_graphs(8, 2, 1, spec, magmoms=False)
    val = labelled_graphs(6, 1, 1, spec, magmoms=False)
    single = eval(MODELS[kind])
    single_val = Trainer(single, TrainConfig(**_config(tmp_path / "one")), fidelity_names=["low", "high"]).fit(train, val)["val"]

    script = tmp_path / "ddp.py"
    script.write_text(_SCRIPT.format(tests=str(Path(__file__).parent), config=_config(tmp_path / "two"), model=MODELS[kind],
                                     weights=str(tmp_path / "w.pt"), metrics=str(tmp_path / "val.json")))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]

    distributed = torch.load(tmp_path / "w.pt")
    moved, initial = 0.0, eval(MODELS[kind]).state_dict()
    for key, value in single.state_dict().items():
        assert torch.allclose(value, distributed[key], rtol=1e-4, atol=1e-6), key
        moved = max(moved, float((value - initial[key]).abs().max()))
    assert moved > 1e-3  # the weights really trained
    two_val = json.loads((tmp_path / "val.json").read_text())
    for target, stats in single_val["high"].items():
        assert abs(stats["mae"] - two_val["high"][target]["mae"]) <= 1e-3 * stats["mae"] + 1e-6, target
        assert stats["count"] == two_val["high"][target]["count"]
