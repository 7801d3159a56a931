"""``mfwrap train``: the run config (read and checked whole, its options listed by ``--help``) and the run."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import yaml


def _yaml(value: Any) -> str:
    """A default as YAML writes it, on one line."""
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000).removesuffix("\n...\n").strip()


def _entry(key: str, text: str) -> list[str]:
    """``key`` then ``text`` (reST roles and literals as plain text) from column 40, wrapped at 110 characters."""
    import textwrap

    plain = re.sub(r":\w+:`([^`]+)`", r"\1", re.sub(r":\w+:`~(?:[\w.]+\.)?([^`]+)`", r"\1", text)).replace("``", "")
    wrapped = textwrap.wrap(plain, 70, break_on_hyphens=False)
    head = [f"{key:<39} {wrapped[0]}"] if len(key) < 40 else [key, " " * 40 + wrapped[0]]
    return head + [" " * 40 + more for more in wrapped[1:]]


def _describe(cls: type, indent: int, sections: dict[str, type] | None = None, skip: tuple[str, ...] = ()) -> list[str]:
    """One entry per field of ``cls`` but ``skip`` (``name: default  (type) help``); ``sections`` are
    nested dataclasses, listed field by field below their name."""
    import dataclasses

    from mfwrap.train.config import field_docs

    sections = sections or {}
    lines = []
    for doc in field_docs(cls):
        if doc.name in skip:
            continue
        required = doc.default is dataclasses.MISSING
        default = "" if doc.name in sections else "(required)" if required else _yaml(doc.default)
        lines += _entry(f"{' ' * indent}{doc.name}: {default}", f"({doc.type}) {doc.help}")
        if doc.name in sections:
            lines += _describe(sections[doc.name], indent + 2)
    return lines


def config_help() -> str:
    """``mfwrap train --help``: every option of a run config, generated from the config dataclasses
    (their fields, types, defaults and the first sentence of each field's docstring entry)."""
    from mfwrap.datasets.registry import DATASETS, Split
    from mfwrap.replay import ReplayConfig
    from mfwrap.train.baselines import Experiment, ModelConfig
    from mfwrap.train.config import TrainConfig
    from mfwrap.train.data import DataConfig, Source

    lines = [
        "CONFIG.yaml sections (all optional but data), each option as",
        "",
        "  name: default                         (type) what it is",
        "",
        "Relative paths in the file (data sources, output_dir, cache_dir) are relative to the file's folder;",
        "--output-dir, given on the command line, is relative to the working directory.",
        "",
    ]
    lines += _entry("data:", f"(DataConfig) {DataConfig.__doc__.splitlines()[0]}")
    lines += _describe(DataConfig, 2, skip=("dataset", "split"))
    lines += _entry(
        "  <dataset>: {<options>}",
        "instead of sources, a registered dataset (mfwrap.datasets.registry: "
        f"{', '.join(DATASETS)}), split as the benchmark suite splits it; the options:",
    )
    lines += _describe(Split, 4)
    lines += _entry("  each source of train / val / test:", "a mapping of")
    lines += _describe(Source, 4)
    lines += _describe(Experiment, 0, sections={"model": ModelConfig, "train": TrainConfig, "replay": ReplayConfig})
    return "\n".join(lines) + "\n"


def _load_run_config(path: str, overrides: argparse.Namespace) -> tuple[Any, Any]:
    """(Experiment, DataConfig) of the run config at ``path``, checked whole (every key, value type and
    choice, the target fidelity) before any file is read or anything trained: ValueError, one line
    starting with ``path``. Relative paths in the file are relative to its folder (``--output-dir``,
    given on the command line, to the working directory)."""
    import dataclasses

    from mfwrap.fidelity import resolve_fidelity
    from mfwrap.train.baselines import Experiment
    from mfwrap.train.config import from_mapping
    from mfwrap.train.data import DataConfig

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {' '.join(str(error).split())}") from None
    known = ["data", *(f.name for f in dataclasses.fields(Experiment))]
    try:
        if not isinstance(raw, dict):
            raise ValueError(f"expected a mapping of {known} (see mfwrap train --help), got {raw!r}")
        unknown = [key for key in raw if key not in known]
        if unknown:
            raise ValueError(f"unknown top-level key(s) {unknown}; known are {known}")
        if "data" not in raw:
            raise ValueError("a 'data' section is required (see mfwrap train --help)")
        folder = Path(path).parent
        data = DataConfig.from_dict(raw.pop("data")).relative_to(folder)
        train = raw.pop("train", None) or {}
        if isinstance(train, dict) and isinstance(train.get("output_dir"), str):
            train = {**train, "output_dir": str(folder / Path(train["output_dir"]).expanduser())}
        if overrides.output_dir is not None and isinstance(train, dict):
            train = {**train, "output_dir": overrides.output_dir}
        if isinstance(raw.get("replay"), dict):
            raw["replay"] = _replay_relative_to(raw["replay"], folder)
        experiment = from_mapping(Experiment, {**raw, "train": train}, "")
        origin = experiment.model.origin
        if origin is not None and origin not in data.fidelities:
            if experiment.replay is None:
                raise ValueError(
                    f"model.origin {origin!r} is none of the data's fidelities {data.fidelities}: name one of them, "
                    "or add a replay section, whose frames carry the origin fidelity"
                )
            data.fidelities = [origin, *data.fidelities]  # the replay frames' fidelity; the target stays last
        target = experiment.train.target_fidelity
        resolve_fidelity(data.fidelities, target, default=data.fidelities[-1], option="train.target_fidelity")
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return experiment, data


def _replay_relative_to(replay: dict, folder: Path) -> dict:
    """The replay section with its file sources and cache_dir relative to the config file's ``folder``."""
    from mfwrap.replay.structures import SOURCE_WORDS

    replay = dict(replay)
    sources = replay.get("sources")
    if isinstance(sources, list):
        replay["sources"] = [
            s if not isinstance(s, str) or s in SOURCE_WORDS else str(folder / Path(s).expanduser()) for s in sources
        ]
    if isinstance(replay.get("cache_dir"), str):
        replay["cache_dir"] = str(folder / Path(replay["cache_dir"]).expanduser())
    return replay


def cmd_train(args: argparse.Namespace) -> int:
    from mfwrap.train.baselines import claim_output, initial_backbone, run_experiment
    from mfwrap.train.data import load_data
    from mfwrap.train.metrics import format_table

    experiment, data = _load_run_config(args.config, args)
    # refused before the backbone is built and the data read; --overwrite deletes once the data are read
    claim_output(experiment, resume=args.resume, overwrite=args.overwrite, check_only=True)
    backbone = initial_backbone(experiment)  # built (or loaded) once: its graph_spec makes the graphs
    train, val, test = load_data(data, backbone.graph_spec)
    summary = run_experiment(
        experiment, data.fidelities, train, val, test, resume=args.resume, overwrite=args.overwrite, backbone=backbone
    )
    target = experiment.train.target_fidelity or data.fidelities[-1]
    if summary.get("test"):
        print(f"test errors at fidelity {target!r} ({experiment.method}):")
        print(format_table({experiment.method: summary["test"]}, target))
    print(f"outputs in {Path(experiment.train.output_dir) / experiment.method}")
    return 0


def add_train_parser(commands: Any) -> None:
    """The ``train`` subcommand."""
    train = commands.add_parser(
        "train",
        help="train a model from a YAML config",
        description=config_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("config", help="YAML run config (sections described above)")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUTPUT_DIR/<method>/last.pt if it exists (same config required); "
        "the result equals an uninterrupted run",
    )
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run OUTPUT_DIR holds: deletes its best.pt, last.pt, metrics.json, metrics.csv (no other "
        "file) before training; without it or --resume, an OUTPUT_DIR holding a run is an error",
    )
    train.add_argument("--output-dir", default=None, help="overrides train.output_dir of the config")
    train.set_defaults(func=cmd_train)
