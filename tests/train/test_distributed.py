"""torchrun with 2 gloo processes on CPU follows the 1-process trajectory with the same global batch:
with whole batches, with a last partial batch split unevenly (2 + 1), with a last batch smaller
than the world size (dropped), and after stopping and resuming from ``last.pt``.

One torchrun launch runs every scenario (starting processes is most of the cost); each test
compares one scenario's files with a 1-process run made here.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_backbone import TinyBackbone, labelled_graphs

from mfwrap import MultiFidelity  # noqa: F401 - the eval()ed model expressions use it
from mfwrap.model_file import read_payload
from mfwrap.train import TrainConfig, Trainer

_SCRIPT = """
import json, sys, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from tiny_backbone import TinyBackbone, labelled_graphs
from mfwrap import MultiFidelity  # noqa: F401 - the eval()ed model expressions use it
from mfwrap.train import TrainConfig, Trainer
from mfwrap.train.distributed import DistributedContext


class Recording(Trainer):
    # each process's weights after the last step (before fit reloads best.pt)
    def _finish(self, val, test):
        torch.save(self.model.state_dict(), self.out_dir.parent / f"{{self.out_dir.name}}.rank{{self.ctx.rank}}.pt")
        return super()._finish(val, test)


spec = TinyBackbone().graph_spec
val = labelled_graphs(6, 1, 1, spec, magmoms=False)
for name, s in {scenarios!r}.items():
    train = labelled_graphs(12, 0, 0, spec) + labelled_graphs(s["high"], 2, 1, spec, magmoms=False)
    config = TrainConfig(**s["config"], output_dir=f"{out}/{{name}}")
    if "stop_after_steps" in s:  # stop, then resume with other initial weights in new trainers
        trainer = Trainer(eval(s["model"]), config, fidelity_names=["low", "high"])
        trainer.fit(train, val, stop_after_steps=s["stop_after_steps"])
        result = Recording(eval(s["resume_model"]), config, fidelity_names=["low", "high"]).fit(train, val, resume=True)
    else:
        result = Recording(eval(s["model"]), config, fidelity_names=["low", "high"]).fit(train, val)
    if DistributedContext.from_env().is_main:
        json.dump(result["val"], open(f"{out}/{{name}}.json", "w"))
"""

_CONFIG = {"epochs": 2, "batch_size": 4, "progress": False, "seed": 1, "grad_clip": 10.0}
_BACKBONE = "TinyBackbone(seed=0)"
_WRAPPED = "MultiFidelity(TinyBackbone(seed=0), ['low', 'high'], 'ECMR')"
# 12 low-fidelity structures plus `high` high-fidelity ones, in global batches of 4:
# 20 → whole batches; 19 → a last batch of 3 split 2 + 1; 17 → a last batch of 1, dropped.
# The wrapper's per-fidelity readout copies go unused in some processes.
SCENARIOS = {
    "backbone": {"model": _BACKBONE, "high": 8, "config": _CONFIG},
    "uneven": {"model": _WRAPPED, "high": 7, "config": _CONFIG},
    "dropped": {"model": _BACKBONE, "high": 5, "config": _CONFIG},
    # 5 steps per epoch: stops in the middle of the second epoch
    "resumed": {
        "model": _WRAPPED,
        "resume_model": "MultiFidelity(TinyBackbone(seed=4), ['low', 'high'], 'ECMR')",
        "high": 7,
        "config": _CONFIG,
        "stop_after_steps": 7,
    },
}


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """Run every scenario with torchrun --nproc-per-node=2; returns the output folder."""
    out = tmp_path_factory.mktemp("ddp")
    script = out / "ddp.py"
    script.write_text(_SCRIPT.format(tests=str(Path(__file__).parent), scenarios=SCENARIOS, out=str(out)))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return out


class _DropsLikeTwoProcesses(Trainer):
    """One process that drops a last batch smaller than 2, as a 2-process run does."""

    def _batches_of_epoch(self, n, epoch):
        batches = super()._batches_of_epoch(n, epoch)
        return batches[:-1] if len(batches[-1]) < 2 else batches


def _one_process(tmp_path, name, trainer_class=Trainer):
    scenario = SCENARIOS[name]
    spec = TinyBackbone().graph_spec
    train = labelled_graphs(12, 0, 0, spec) + labelled_graphs(scenario["high"], 2, 1, spec, magmoms=False)
    val = labelled_graphs(6, 1, 1, spec, magmoms=False)
    config = TrainConfig(**scenario["config"], output_dir=str(tmp_path / name))
    result = trainer_class(eval(scenario["model"]), config, fidelity_names=["low", "high"]).fit(train, val)
    return read_payload(tmp_path / name / "last.pt"), result["val"]


def _assert_follows_one_process(out, name, last, single_val):
    """Both processes end with the same weights, equal to the 1-process ones; same validation errors."""
    weights = [torch.load(out / f"{name}.rank{rank}.pt") for rank in (0, 1)]
    assert read_payload(out / name / "last.pt")["global_step"] == last["global_step"]
    moved, initial = 0.0, eval(SCENARIOS[name]["model"]).state_dict()
    for key, value in last["state_dict"].items():
        assert torch.equal(weights[0][key], weights[1][key]), key
        assert torch.allclose(value, weights[0][key], rtol=1e-4, atol=1e-6), key
        moved = max(moved, float((value - initial[key]).abs().max()))
    assert moved > 1e-3  # the weights really trained
    two_val = json.loads((out / f"{name}.json").read_text())
    for target, stats in single_val["high"].items():
        assert abs(stats["mae"] - two_val["high"][target]["mae"]) <= 1e-3 * stats["mae"] + 1e-6, target
        assert stats["count"] == two_val["high"][target]["count"]


@pytest.mark.parametrize("name", ["backbone", "uneven"])
def test_two_gloo_processes_equal_one_process(two_processes, tmp_path, name):
    last, single_val = _one_process(tmp_path, name)
    assert last["global_step"] == 2 * 5
    _assert_follows_one_process(two_processes, name, last, single_val)


def test_a_last_batch_smaller_than_the_world_size_is_dropped(two_processes, tmp_path):
    """17 structures: batches 4, 4, 4, 4, 1; two processes take the first four batches of each epoch."""
    last, single_val = _one_process(tmp_path, "dropped", _DropsLikeTwoProcesses)
    assert last["global_step"] == 2 * 4
    _assert_follows_one_process(two_processes, "dropped", last, single_val)


def test_resumed_two_process_run_equals_uninterrupted_one(two_processes):
    """Stopped after 7 steps and resumed from last.pt with other initial weights: the same weights
    as the uninterrupted 2-process run, bit for bit, in both processes."""
    stopped_at = SCENARIOS["resumed"]["stop_after_steps"]
    assert 5 < stopped_at < 10  # mid-way through the second epoch
    for rank in (0, 1):
        resumed = torch.load(two_processes / f"resumed.rank{rank}.pt")
        uninterrupted = torch.load(two_processes / f"uneven.rank{rank}.pt")
        for key, value in uninterrupted.items():
            assert torch.equal(value, resumed[key]), (rank, key)
    assert json.loads((two_processes / "resumed.json").read_text()) == json.loads(
        (two_processes / "uneven.json").read_text()
    )
    for name in ("resumed", "uneven"):
        assert read_payload(two_processes / name / "last.pt")["global_step"] == 10
    logs = [json.loads((two_processes / name / "metrics.json").read_text()) for name in ("resumed", "uneven")]
    assert logs[0]["history"] == logs[1]["history"]  # losses, learning rates, validation errors of every epoch
