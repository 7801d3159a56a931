"""The one mfwrap model file: architecture + weights, for every model mfwrap trains or wraps.

A file is a weights-only torch file (:func:`mfwrap.files.read_torch`: reading it runs no code)::

    {"format": "mfwrap", "version": 2,
     "architecture": {"class": "backbones.chgnet:CHGNet", "config": {...constructor arguments}},
     "state_dict": {...}, "fidelity_names": [...], ...}

An *architecture* says how to rebuild a model: the import path of its class (an ``nn.Module``
subclass; anything else is refused) and its ``config``, the keyword arguments of its
constructor. A config value that is itself an architecture (a dict with "class" and "config")
is built first, so composite models nest::

    MultiFidelity: {"class": "mfwrap.multifidelity:MultiFidelity", "config": {"backbone": {...},
                    "fidelities": [...], "mechanisms": "ECMR", "spec": {...}, "row_kinds": {...}}}
    DeltaModel:    {"class": "mfwrap.delta:DeltaModel", "config": {"base": {...}, "delta": {...}}}

A model is describable when it has a ``config`` mapping (:func:`describe_model` replaces each
``nn.Module`` value by its architecture). :meth:`mfwrap.MultiFidelity.save` and the trainer's
``best.pt`` / ``last.pt`` are such files (a trainer checkpoint adds its training state);
:func:`mfwrap.load` reads any of them, and files of the earlier formats
("mfwrap.MultiFidelity" v1, "mfwrap-checkpoint").
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Mapping

import torch
from torch import nn

from mfwrap.files import read_torch, save_torch

FORMAT = "mfwrap"
VERSION = 2
_LEGACY_MULTIFIDELITY = "mfwrap.MultiFidelity"
_LEGACY_CHECKPOINT = "mfwrap-checkpoint"


def import_class(path: str) -> type[nn.Module]:
    """The ``nn.Module`` subclass named "package.module:Qualified.Name"; anything else is refused."""
    module_name, _, qualname = str(path).partition(":")
    if not module_name or not qualname:
        raise ValueError(f"expected a class path 'module:Class', got {path!r}")
    found: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        found = getattr(found, part)
    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        raise ValueError(f"{path!r} is not a torch.nn.Module class; a model architecture names only model classes")
    return found


def _is_architecture(value: Any) -> bool:
    return isinstance(value, Mapping) and set(value) == {"class", "config"}


def describe_model(model: nn.Module) -> dict[str, Any]:
    """The architecture of ``model`` (see the module docstring); TypeError if it has no ``config``."""
    config = getattr(model, "config", None)
    if not isinstance(config, Mapping):
        raise TypeError(
            f"{type(model).__name__} has no `config` mapping of constructor arguments, so it cannot be rebuilt"
        )
    cls = type(model)
    described = {key: describe_model(value) if isinstance(value, nn.Module) else value for key, value in config.items()}
    return {"class": f"{cls.__module__}:{cls.__qualname__}", "config": described}


def build_model(architecture: Mapping[str, Any]) -> nn.Module:
    """A fresh model with the architecture ``architecture`` (load a state dict next)."""
    if not _is_architecture(architecture):
        raise ValueError(f"not a model architecture (expected keys 'class' and 'config'): {sorted(architecture)}")
    cls = import_class(architecture["class"])
    config = {
        key: build_model(value) if _is_architecture(value) else value for key, value in architecture["config"].items()
    }
    return cls(**config)


def save_model(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    architecture: Mapping[str, Any] | None = None,
    fidelity_names: Any = None,
    **extra: Any,
) -> None:
    """Write ``model``'s weights, its architecture (default :func:`describe_model`; stored as None
    when the model cannot be described, so the file holds weights only) and the JSON-like
    ``extra`` entries to ``path``, atomically."""
    if architecture is None:
        try:
            architecture = describe_model(model)
        except TypeError:
            architecture = None
    names = fidelity_names if fidelity_names is not None else getattr(model, "fidelity_names", None)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "architecture": architecture,
        "state_dict": model.state_dict(),
        "fidelity_names": list(names) if names else None,
        **extra,
    }
    save_torch(payload, path)


def read_payload(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """The contents of an mfwrap file, in the current layout (earlier formats are converted)."""
    payload = read_torch(path, map_location)
    kind = payload.get("format") if isinstance(payload, dict) else None
    if kind == FORMAT:
        if payload.get("version") != VERSION:
            raise ValueError(
                f"{path}: mfwrap file version {payload.get('version')}; this mfwrap reads version {VERSION}"
            )
        return payload
    if kind == _LEGACY_MULTIFIDELITY:
        return _from_multifidelity_v1(payload, path)
    if kind == _LEGACY_CHECKPOINT:
        architecture = _from_model_spec(payload["model_spec"]) if payload.get("model_spec") else None
        rest = {k: v for k, v in payload.items() if k not in ("format", "model_spec", "model_state")}
        return {
            **rest,
            "format": FORMAT,
            "version": VERSION,
            "architecture": architecture,
            "state_dict": payload["model_state"],
        }
    raise ValueError(f"{path}: not an mfwrap model file or checkpoint")


def read_model_file(
    path: str | os.PathLike, map_location: str | torch.device | None = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """(model with its saved weights, the file's contents) of an mfwrap file; ValueError if it cannot be."""
    payload = read_payload(path, map_location)
    if not payload.get("architecture"):
        raise ValueError(
            f"{path}: the file has weights but no architecture (its model had no `config`), so it cannot be rebuilt"
        )
    try:
        model = build_model(payload["architecture"])
    except Exception as error:
        raise ValueError(f"{path}: cannot rebuild {payload['architecture'].get('class')}: {error}") from error
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        raise ValueError(f"{path}: weights do not match the rebuilt model: {error}") from error
    return (model.to(map_location) if map_location is not None else model), payload


def _from_model_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Architecture of an earlier trainer checkpoint's ``model_spec``."""
    kind = spec.get("kind")
    if kind == "backbone":
        return {"class": spec["class"], "config": dict(spec["config"])}
    if kind == "multi_fidelity":
        config = {
            "backbone": _from_model_spec({"kind": "backbone", **spec["backbone"]}),
            "fidelities": spec["fidelities"],
            "mechanisms": spec["mechanisms"],
            "spec": spec["spec"],
            "row_kinds": spec["row_kinds"],
        }
        return {"class": "mfwrap.multifidelity:MultiFidelity", "config": config}
    if kind == "delta":
        return {
            "class": "mfwrap.delta:DeltaModel",
            "config": {"base": _from_model_spec(spec["base"]), "delta": _from_model_spec(spec["delta"])},
        }
    raise ValueError(f"unknown model kind {kind!r} in an earlier checkpoint's model spec")


def _from_multifidelity_v1(payload: Mapping[str, Any], path: Any) -> dict[str, Any]:
    """A file of ``MultiFidelity.save`` format version 1, in the current layout."""
    missing = {
        "backbone_class",
        "backbone_config",
        "spec",
        "fidelities",
        "mechanisms",
        "row_kinds",
        "state_dict",
    } - set(payload)
    if payload.get("version") != 1 or missing:
        raise ValueError(
            f"{path}: damaged MultiFidelity file (version {payload.get('version')}, missing {sorted(missing)})"
        )
    spec = {
        "kind": "multi_fidelity",
        "backbone": {"class": payload["backbone_class"], "config": payload["backbone_config"]},
        **{key: payload[key] for key in ("spec", "fidelities", "mechanisms", "row_kinds")},
    }
    return {
        "format": FORMAT,
        "version": VERSION,
        "architecture": _from_model_spec(spec),
        "state_dict": payload["state_dict"],
        "fidelity_names": list(payload["fidelities"]),
    }
