"""A finished run's result: what ``result.json`` (and each run of a report's ``runs``) holds.

Metrics are nested dicts {fidelity: {target: {"mae", "rmse", "count"}}} in the units of
:mod:`mfwrap.train.metrics` (meV/atom, meV/Å, GPa, μB). Reading is strict: a missing required key,
an unknown key or a damaged file is a ValueError naming it (:func:`read_result`, which the runner
uses, warns and treats a damaged result as no result, so that the run trains again). The optional
keys are the ones that results written before they existed lack (``train_options``,
``fidelity_init``, ``compiled_steps``, ``schedule``, ``identity``) and the provenance of copies
(``pretrain_reused_from``, ``reused_from``); an absent one is None and is not written back, so a
result reads and writes back to the same JSON.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mfwrap.bench.grid import RunSpec
from mfwrap.files import write_text


@dataclass
class RunResult:
    """One finished run (module docstring).

    Attributes:
        spec: what ran. name: its directory name (``spec.name``). level: the level it ran at.
        protocol: its protocol (``spec.protocol``). epochs: the epochs of its final stage (a
            ceiling under ``converged``). epochs_run, steps: what that stage trained (optimiser
            steps, batch size :data:`mfwrap.bench.runner.BATCH_SIZE`). wall_s: seconds from
            start to result, pre-training, compilation and evaluation included.
        n_train: {"high": N_high, "low": N_low} training frames it saw. n_val, n_test: high-fidelity
            validation and test frames. target_fidelity: the name of the high fidelity.
        best: the best validation score and its epoch ({"value", "epoch", "metric"}, or None).
        val, test: metrics of the tested checkpoint. machine: where it ran (cpu, cores, torch,
            threads, gpu).
        train_options: the method's TrainConfig options. fidelity_init: the fidelity parameters'
            start (ModelConfig). compiled_steps: whether its training steps were compiled.
        schedule: the learning-rate schedule and early stopping of its final stage.
        pretrain_reused_from: "<experiment>/<run>" whose low-fidelity pre-training it copied.
        reused_from: "<experiment>/<run>" whose whole result it copied (the same run).
        identity: everything that determines the run (:mod:`mfwrap.bench.identity`); None in results
            written before it was recorded (then derived from spec and level, ``identity_of``).
    """

    spec: RunSpec
    name: str
    level: str
    protocol: str
    epochs: int
    epochs_run: int | None
    steps: int | None
    wall_s: float
    n_train: dict[str, int]
    train_options: dict | None = None
    fidelity_init: str | None = None
    compiled_steps: bool | None = None
    schedule: dict | None = None
    n_val: int = 0
    n_test: int = 0
    target_fidelity: str = ""
    best: dict | None = None
    val: dict = dataclasses.field(default_factory=dict)
    test: dict = dataclasses.field(default_factory=dict)
    machine: dict = dataclasses.field(default_factory=dict)
    pretrain_reused_from: str | None = None
    reused_from: str | None = None
    identity: dict | None = None

    def to_json(self) -> dict[str, Any]:
        """The result as ``result.json`` holds it; optional keys that are None are left out."""
        out: dict[str, Any] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.name in OPTIONAL and value is None:
                continue
            out[item.name] = self.spec.as_dict() if item.name == "spec" else value
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "result") -> RunResult:
        """A result from its JSON dict; ValueError naming ``source`` and the key if one is missing or unknown."""
        keys = set(data)
        if missing := [k for k in REQUIRED if k not in keys]:
            raise ValueError(f"{source}: run result lacks {missing}; it is not a result of mfwrap bench")
        if unknown := sorted(keys - set(REQUIRED) - set(OPTIONAL)):
            raise ValueError(f"{source}: unknown key(s) {unknown} in a run result; known are {[*REQUIRED, *OPTIONAL]}")
        spec = data["spec"]
        spec_fields = [f.name for f in dataclasses.fields(RunSpec)]
        if not isinstance(spec, dict) or set(spec) - set(spec_fields):
            raise ValueError(f"{source}: 'spec' must be a dict of {spec_fields}, got {spec!r}")
        try:
            run_spec = RunSpec(**spec)
        except TypeError as error:
            raise ValueError(f"{source}: 'spec' lacks a field of {spec_fields} ({error})") from None
        except ValueError as error:  # an unknown method, backbone or protocol
            raise ValueError(f"{source}: {error}") from None
        return cls(**{**data, "spec": run_spec})

    @classmethod
    def read(cls, path: str | Path) -> RunResult:
        """The result in the JSON file ``path``; ValueError naming it if it is not one (damaged, truncated)."""
        return cls.from_json(_read_json(path), str(path))

    def write(self, path: str | Path) -> None:
        """Write the result as JSON (one space indent) to ``path``."""
        write_text(Path(path), json.dumps(self.to_json(), indent=1, default=float))

    @property
    def test_mae(self) -> dict[str, float]:
        """The high-fidelity test MAE per target."""
        return {target: values["mae"] for target, values in self.test[self.target_fidelity].items()}

    def with_experiment(self, experiment: str, reused_from: str) -> RunResult:
        """A copy of this result for the same run in ``experiment``, marked as reused."""
        return dataclasses.replace(
            self,
            spec=dataclasses.replace(self.spec, experiment=experiment),
            reused_from=self.reused_from or reused_from,
        )


def read_runs(path: str | Path) -> list[RunResult]:
    """Every run's result in a report's ``<experiment>.json`` (its "runs"); ValueError naming the file if it is
    not such a report (damaged, truncated, foreign)."""
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise ValueError(f"{path}: not a report of mfwrap bench (no list of 'runs')")
    return [RunResult.from_json(run, f"{path} run {i}") for i, run in enumerate(data["runs"])]


def _read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: damaged JSON ({error})") from None


_WARNED: set[str] = set()


def warn_damaged(path: str | Path, error: Exception, consequence: str) -> None:
    """One warning line (once per file and process) naming a damaged file, what is wrong and what follows."""
    if str(path) not in _WARNED:
        _WARNED.add(str(path))
        print(f"warning: {error}; {consequence}", file=sys.stderr, flush=True)


def read_result(path: str | Path) -> RunResult | None:
    """The run result in ``path``; None if there is none, or if it is damaged (then warned about, naming it:
    such a run is not done and trains again)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return RunResult.read(path)
    except ValueError as error:
        warn_damaged(path, error, "the run counts as not done: left out of reports, trained again by mfwrap bench")
        return None


OPTIONAL = (
    "train_options",
    "fidelity_init",
    "compiled_steps",
    "schedule",
    "pretrain_reused_from",
    "reused_from",
    "identity",
)
REQUIRED = tuple(f.name for f in dataclasses.fields(RunResult) if f.name not in OPTIONAL)
