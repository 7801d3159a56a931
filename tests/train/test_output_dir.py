"""A run's output_dir: a run there is never replaced unless asked (--overwrite, which deletes only the
trainer's files) or continued (--resume); an output_dir that cannot be written fails before training,
and every OS error in writing is one line naming the path and the problem."""

import errno
import sys
from pathlib import Path

import pytest
from tiny_backbone import TinyBackbone, labelled_graphs

from mfwrap.cli import main
from mfwrap.files import write_atomic
from mfwrap.train import TrainConfig, Trainer
from mfwrap.train import trainer as trainer_module
from mfwrap.train.baselines import Experiment, run_experiment
from mfwrap.train.output_dir import RUN_FILES

sys.path.insert(0, str(Path(__file__).parents[1]))
from test_cli import TINY, _write, refusal  # noqa: E402  (the tiny backbone's labelled extxyz files)

SPEC = TinyBackbone().graph_spec
TRAIN = labelled_graphs(12, 0, 0, SPEC)


@pytest.fixture
def config(tmp_path):
    _write(tmp_path / "low.xyz", 6, 0, 0)
    _write(tmp_path / "high.xyz", 6, 1, 1)
    path = tmp_path / "run.yaml"
    path.write_text(f"""
model: {TINY}
data:
  fidelities: [pbe, r2scan]
  train: [{{path: low.xyz, fidelity: pbe}}, {{path: high.xyz, fidelity: r2scan}}]
train: {{epochs: 2, targets: ef, output_dir: out, progress: false}}
""")
    return path


def test_a_rerun_without_resume_or_overwrite_never_replaces_the_run(config, monkeypatch):
    assert main(["train", str(config)]) == 0
    run = config.parent / "out" / "multi_fidelity"
    before = {name: (run / name).read_bytes() for name in RUN_FILES}
    steps = []
    monkeypatch.setattr(trainer_module.Trainer, "train_step", lambda *args: steps.append(1))
    message = refusal(["train", str(config)])
    assert f"{run} holds a training run (best.pt, last.pt, metrics.json, metrics.csv)" in message, message
    assert "--resume" in message and "--overwrite" in message
    assert {name: (run / name).read_bytes() for name in RUN_FILES} == before and not steps


def test_overwrite_deletes_only_the_trainers_files(config):
    assert main(["train", str(config)]) == 0
    run = config.parent / "out" / "multi_fidelity"
    (run / "notes.txt").write_text("mine")
    (run.parent / "other.csv").write_text("mine too")
    first = (run / "last.pt").read_bytes()
    config.write_text(config.read_text().replace("high.xyz", "missing.xyz"))
    assert "no such file" in refusal(["train", str(config), "--overwrite"])  # a run that never starts
    assert (run / "last.pt").read_bytes() == first  # deletes nothing
    config.write_text(config.read_text().replace("missing.xyz", "high.xyz").replace("epochs: 2", "epochs: 1"))
    assert main(["train", str(config), "--overwrite"]) == 0
    assert (run / "last.pt").read_bytes() != first  # a one-epoch run now
    assert (run / "notes.txt").read_text() == "mine" and (run.parent / "other.csv").read_text() == "mine too"
    assert "exclude each other" in refusal(["train", str(config), "--resume", "--overwrite"])


def test_the_python_api_refuses_before_any_training(tmp_path):
    config = TrainConfig(epochs=1, output_dir=str(tmp_path / "run"), progress=False)
    Trainer(TinyBackbone(seed=0), config).fit(TRAIN)
    with pytest.raises(ValueError, match="holds a training run .*resume=True.*overwrite=True"):
        Trainer(TinyBackbone(seed=0), config).fit(TRAIN)
    Trainer(TinyBackbone(seed=0), config).fit(TRAIN, overwrite=True)
    Trainer(TinyBackbone(seed=0), config).fit(TRAIN, resume=True)  # finished: re-evaluated, not retrained

    # transfer: its final stage's directory is checked before stage one (pre-training) trains
    graphs = labelled_graphs(8, 0, 0, SPEC) + labelled_graphs(6, 1, 1, SPEC)
    experiment = Experiment(method="transfer", model={"backbone": "tiny_backbone:TinyBackbone"}, train=config)
    (tmp_path / "run" / "transfer").mkdir()
    (tmp_path / "run" / "transfer" / "best.pt").write_bytes(b"an earlier model")
    with pytest.raises(ValueError, match=r"run/transfer holds a training run \(best.pt\)"):
        run_experiment(experiment, ["low", "high"], graphs)
    assert not list((tmp_path / "run").glob("pretrain/*"))  # nothing trained
    run_experiment(experiment, ["low", "high"], graphs, overwrite=True)
    assert (tmp_path / "run" / "transfer" / "best.pt").read_bytes() != b"an earlier model"


@pytest.mark.parametrize(
    "where, problem", [("file/out", "/file is a file, not a folder"), ("x" * 300, "File name too long")]
)
def test_an_output_dir_that_cannot_be_written_fails_before_training(config, monkeypatch, where, problem):
    """(Tests may run as root, where a read-only folder is writable: a folder under a file and a name
    too long for the file system are places nobody can write.)"""
    (config.parent / "file").write_text("a file, not a folder")
    steps = []
    monkeypatch.setattr(trainer_module.Trainer, "train_step", lambda *args: steps.append(1))
    message = refusal(["train", str(config), "--output-dir", str(config.parent / where)])
    assert f"cannot write {config.parent / where}" in message and problem in message, message
    assert not steps


def test_a_full_disk_mid_run_is_one_line_naming_the_file(config, monkeypatch):
    def full(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("mfwrap.files.os.fsync", full)
    message = refusal(["train", str(config)])
    assert f"cannot write {config.parent / 'out' / 'multi_fidelity'}/" in message, message
    assert "No space left on device" in message
    assert not list((config.parent / "out").rglob("*.tmp"))  # the failed write left no temporary file


def test_atomic_writes_name_the_path_and_keep_the_error_type(tmp_path):
    (tmp_path / "file").write_text("")
    blocked = rf"^cannot write {tmp_path}/file/a.json: {tmp_path}/file is a file, not a folder$"
    with pytest.raises(NotADirectoryError, match=blocked):
        write_atomic(tmp_path / "file" / "a.json", lambda stream: stream.write(b"{}"))

    def full(stream):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=rf"^cannot write {tmp_path}/b.json: No space left on device$") as raised:
        write_atomic(tmp_path / "b.json", full)
    assert raised.value.errno == errno.ENOSPC and list(tmp_path.iterdir()) == [tmp_path / "file"]


def test_json_onto_a_directory_is_one_line(config):
    assert main(["train", str(config)]) == 0
    best = config.parent / "out" / "multi_fidelity" / "best.pt"
    data = str(config.parent / "high.xyz")
    message = refusal(["evaluate", str(best), data, "--fidelity", "r2scan", "--json", str(best.parent)])
    assert "is a directory" in message.lower() and str(best.parent) in message, message
