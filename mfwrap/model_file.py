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

Which classes a file may name (reading a file imports nothing else): classes of the modules on the
allow-list, checked on the name *before* anything is imported. The list holds mfwrap and the
``backbones`` package installed beside it (a ``backbones`` found elsewhere first on ``sys.path``,
e.g. a folder of that name in the working directory under ``python -m``, is refused rather than
imported), the modules of classes that a config or the suite's backbone table names (trusted as the
user's own choice, :func:`import_class`), and the modules registered with
:func:`register_architecture_module` or listed, comma-separated, in ``$MFWRAP_ARCHITECTURE_MODULES``.
A registered module is trusted as Python finds it on ``sys.path``. Entries match whole dotted
components ("mypkg" allows "mypkg.models", not "mypkg_evil"); relative names are refused.

A file may also record ``elements``: the atomic numbers of its model's training data
(:func:`trained_elements`; the trainer records them). :func:`warn_unseen_elements` warns, once per
model and element, about structures with other elements. Files without the record (written before
it existed, or models never trained by mfwrap, e.g. a pretrained CHGNet) give no warning, nor do
models fine-tuned from pretrained weights, whose pretraining elements mfwrap does not know (their
record is :data:`ELEMENTS_UNKNOWN`, which the shipped backbones' ``from_pretrained`` and a config's
``model.pretrained`` set; in Python, set
``model.trained_elements = mfwrap.model_file.ELEMENTS_UNKNOWN`` before training such a model).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
import types
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from mfwrap.files import UnsafeFileError, read_torch, save_torch

FORMAT = "mfwrap"
VERSION = 2
_LEGACY_MULTIFIDELITY = "mfwrap.MultiFidelity"
_LEGACY_CHECKPOINT = "mfwrap-checkpoint"


_SHIPPED = ("mfwrap", "backbones")  # packages installed together: the allow-list's fixed part
_registered: set[str] = set()
ENV_MODULES = "MFWRAP_ARCHITECTURE_MODULES"
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def register_architecture_module(name: str) -> None:
    """Allow model files to name classes of the module ``name`` and its submodules (e.g. "mypkg.models").

    Loading such a file imports that module, so register only code you trust. See the module
    docstring for what is allowed without registering.
    """
    if not isinstance(name, str) or not _DOTTED.fullmatch(name):
        raise ValueError(f"register_architecture_module takes an absolute dotted module name, got {name!r}")
    _registered.add(name)


def _allowed_modules() -> set[str]:
    from_env = {n.strip() for n in os.environ.get(ENV_MODULES, "").split(",") if n.strip()}
    return {*_SHIPPED, *_registered, *(n for n in from_env if _DOTTED.fullmatch(n))}


def _is_allowed(module_name: str) -> bool:
    parts = module_name.split(".")
    return any(parts[: len(allowed.split("."))] == allowed.split(".") for allowed in _allowed_modules())


def _split_class_path(path: Any) -> tuple[str, list[str]]:
    module_name, _, qualname = str(path).partition(":")
    dunder = any(part.startswith("__") for part in f"{module_name}.{qualname}".split("."))
    if dunder or not _DOTTED.fullmatch(module_name) or not _DOTTED.fullmatch(qualname):
        raise ValueError(f"expected a class path 'package.module:Class' (no dunder names), got {path!r}")
    return module_name, qualname.split(".")


def _resolve(module_name: str, parts: list[str], path: str) -> type[nn.Module]:
    found: Any = importlib.import_module(module_name)
    for part in parts:
        found = getattr(found, part, None)
        if found is None or isinstance(found, types.ModuleType):
            raise ValueError(f"{path!r} is not a torch.nn.Module class; a model architecture names only model classes")
    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        raise ValueError(f"{path!r} is not a torch.nn.Module class; a model architecture names only model classes")
    return found


def import_class(path: str) -> type[nn.Module]:
    """The ``nn.Module`` subclass named "package.module:Qualified.Name"; anything else is refused.

    For class paths the user wrote (a config's ``model.backbone``, the suite's table): the module is
    imported, and registered (:func:`register_architecture_module`) so that files of models built
    from it load in this process. Model files go through :func:`architecture_class` instead.
    """
    module_name, parts = _split_class_path(path)
    cls = _resolve(module_name, parts, path)
    register_architecture_module(module_name)
    return cls


def _check_shipped_origin(root: str, source: Any) -> None:
    """UnsafeFileError unless the shipped package ``root`` is (or would be imported from) beside mfwrap."""
    home = Path(__file__).resolve().parent.parent
    module = sys.modules.get(root)
    spec = module.__spec__ if module is not None else importlib.util.find_spec(root)  # a top-level find imports nothing
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations or any(Path(location).resolve().parent != home for location in locations):
        found = ", ".join(locations) if locations else getattr(spec, "origin", None) or "nowhere"
        raise UnsafeFileError(
            f"{source}: refused: {root!r} would be imported from {found}, not from the installed package beside "
            f"mfwrap ({home / root}); run from another directory so that the local {root!r} does not shadow it"
        )


def _require_allowed(module_name: str, path: Any, source: Any) -> None:
    if not _is_allowed(module_name):
        raise UnsafeFileError(
            f"{source}: refused to import {module_name!r} for class {path!r}: model files may name classes of mfwrap, "
            f"backbones and registered modules only; if you trust it, call "
            f"mfwrap.register_architecture_module({module_name!r}) or set {ENV_MODULES}={module_name}"
        )


def architecture_class(path: Any, source: Any = "model file") -> type[nn.Module]:
    """The class a model file (``source``, for messages) names, if its module is on the allow-list
    (module docstring); checked before anything is imported. UnsafeFileError (a ValueError) otherwise."""
    module_name, parts = _split_class_path(path)
    _require_allowed(module_name, path, source)
    root = module_name.split(".")[0]
    if root in _SHIPPED:
        _check_shipped_origin(root, source)
    cls = _resolve(module_name, parts, path)
    if not _is_allowed(cls.__module__):
        raise UnsafeFileError(f"{source}: refused: {path!r} is a class of {cls.__module__!r}, not on the allow-list")
    return cls


ELEMENTS_UNKNOWN = "unknown"  # the record of a model that started from weights trained elsewhere


def trained_elements(model: nn.Module) -> list[int] | None:
    """Atomic numbers in the training data of ``model`` and its submodules (the union of their
    ``trained_elements`` records), or None when none has a record or one is :data:`ELEMENTS_UNKNOWN`."""
    record = _elements_record(model)
    return None if record == ELEMENTS_UNKNOWN else record


def _elements_record(model: nn.Module) -> list[int] | str | None:
    """What a file stores: the union of the modules' records, ELEMENTS_UNKNOWN if one is, or None."""
    records = [m.trained_elements for m in model.modules() if getattr(m, "trained_elements", None) is not None]
    if ELEMENTS_UNKNOWN in records:
        return ELEMENTS_UNKNOWN
    return sorted(set().union(*map(set, records))) if records else None


def starts_trained(model: nn.Module) -> bool:
    """Whether ``model``'s weights were trained before: it (or a submodule) has a ``trained_elements``
    record, which pretrained weights carry (:data:`ELEMENTS_UNKNOWN`) and mfwrap's trainer writes.
    A model whose trained part is one of its modules (a Δ model's correction) answers with its own
    ``starts_trained()``. Decides ``train.composition_reference: auto``."""
    own = getattr(model, "starts_trained", None)
    if callable(own):
        return bool(own())
    return _elements_record(model) is not None


def record_elements(model: nn.Module, numbers: torch.Tensor) -> None:
    """Add the elements of ``numbers`` (atomic numbers) to ``model``'s training-data record; a record
    :data:`ELEMENTS_UNKNOWN` (set on pretrained weights, e.g. by a config's ``model.pretrained``) stays so."""
    own = getattr(model, "trained_elements", None)
    if own != ELEMENTS_UNKNOWN:
        new = set(torch.unique(numbers.detach().cpu()).tolist())
        model.trained_elements = tuple(sorted(set(own or ()) | new))


def warn_unseen_elements(model: nn.Module, numbers: torch.Tensor | Iterable[torch.Tensor]) -> None:
    """Warn (UserWarning) about elements of ``numbers`` (atomic numbers, or a sequence of such tensors)
    that ``model``'s training data had none of; once per model and element. Silent without a record."""
    known = trained_elements(model)
    if known is None:
        return
    if not isinstance(numbers, torch.Tensor):
        numbers = torch.cat([n.reshape(-1).cpu() for n in numbers]) if numbers else torch.zeros(0, dtype=torch.long)
    present = set(torch.unique(numbers.detach().cpu()).tolist())
    warned = model.__dict__.setdefault("_warned_elements", set())
    unseen = sorted(present - set(known) - warned)
    if unseen:
        warned.update(unseen)
        from ase.data import chemical_symbols

        names = ", ".join(chemical_symbols[z] for z in unseen)
        trained = ", ".join(chemical_symbols[z] for z in known)
        warnings.warn(
            f"{type(model).__name__}: element(s) {names} never occurred in this model's training data ({trained}); "
            "its predictions for structures containing them are extrapolations",
            UserWarning,
            stacklevel=3,
        )


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


def build_model(architecture: Mapping[str, Any], source: Any = "model file") -> nn.Module:
    """A fresh model with the architecture ``architecture`` (load a state dict next); every class it
    names must be on the allow-list (:func:`architecture_class`), checked before any is built."""
    if not _is_architecture(architecture):
        raise ValueError(f"not a model architecture (expected keys 'class' and 'config'): {sorted(architecture)}")
    _check_classes(architecture, source)
    return _build(architecture, source)


def _check_classes(architecture: Mapping[str, Any], source: Any) -> None:
    """Refuse before importing anything if any (nested) class path is not on the allow-list."""
    _require_allowed(_split_class_path(architecture["class"])[0], architecture["class"], source)
    for value in architecture["config"].values():
        if _is_architecture(value):
            _check_classes(value, source)


def _build(architecture: Mapping[str, Any], source: Any) -> nn.Module:
    cls = architecture_class(architecture["class"], source)
    config = {key: _build(v, source) if _is_architecture(v) else v for key, v in architecture["config"].items()}
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
        "elements": _elements_record(model),
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
        model = build_model(payload["architecture"], source=path)
    except UnsafeFileError:
        raise
    except Exception as error:
        raise ValueError(f"{path}: cannot rebuild {payload['architecture'].get('class')}: {error}") from error
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        raise ValueError(f"{path}: weights do not match the rebuilt model: {error}") from error
    elements = payload.get("elements")
    if elements is not None:
        model.trained_elements = ELEMENTS_UNKNOWN if elements == ELEMENTS_UNKNOWN else tuple(int(z) for z in elements)
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
