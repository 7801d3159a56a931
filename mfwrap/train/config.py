"""Training hyperparameters as a dataclass, readable from YAML; :func:`from_mapping` builds any config
dataclass from a YAML mapping, checking every key and value type; :func:`field_docs` reads any config
dataclass's options (type, default, docstring entry) for ``mfwrap train --help``.

Defaults are the seed paper's (Dong & Wang 2025, Table 1): Adam, batch 4, 60 epochs, learning rate
0.005 with a cosine schedule, Huber loss on energy/forces/stress/magmoms weighted 1 : 1 : 0.1 : 0.1.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, TypeVar, Union

import yaml

from mfwrap.train.loss import LossWeights, parse_targets


@dataclass
class TrainConfig:
    """Optimisation, schedule, checkpointing and logging of one training run.

    Attributes:
        targets: which labels enter the loss, a subset of "efsm" (energy, forces, stress, magmoms).
        epochs: passes over the training set.
        batch_size: structures per optimiser step (the *global* batch in distributed training).
        lr: peak learning rate of Adam (> 0; with 0 the weights would never change).
        lr_min_fraction: the cosine schedule decays lr to ``lr * lr_min_fraction`` at the last
            step (chgnet's CosLR uses 0.01).
        scheduler: "cos" (cosine over all ``epochs``, stepped once per optimiser step), "constant", or
            "plateau": lr stays at ``lr`` until the validation ``best_metric`` has not improved for
            ``plateau_patience`` epochs (counted since the best epoch or the last reduction), then
            lr ← lr · ``plateau_factor``, never below ``lr · lr_min_fraction``; needs validation frames.
            With ``patience`` it is training to convergence: a run that stops has had its lr cut
            ⌊(patience − 1) / plateau_patience⌋ times since its best epoch.
        plateau_patience: epochs without a better validation metric before a "plateau" reduction.
        plateau_factor: the factor of each "plateau" reduction, in (0, 1).
        weight_decay: Adam's L2 weight decay.
        loss_weights: weights of the energy-per-atom, forces, stress and magmom Huber terms.
        fidelity_loss_weights: {fidelity name: weight} of each fidelity's entries in every loss term
            (default 1 each), e.g. ``{high: 4}`` to weigh the scarce target fidelity more.
        fidelity_sampling: {fidelity name: share} of each fidelity's structures among the ones an
            epoch draws (default {}: every training structure once per epoch, so each fidelity's
            share is its share of the data). Shares are normalised to sum to 1 and must name every
            fidelity in the training set; an epoch keeps its length (the number of training
            structures), draws ``round(share_f * n)`` structures of fidelity f (cycling through
            fresh permutations of a scarce fidelity, a prefix of one permutation of an abundant
            one), and shuffles them. E.g. ``{low: 1, high: 1}``: half of every epoch is high fidelity.
        huber_delta: δ of the Huber loss, in each target's units (eV/atom, eV/Å, GPa, μB).
        grad_clip: clip the global gradient norm to this value; 0 = no clipping.
        nonfinite: what a step with a NaN or inf loss or gradient does: "error" (stop, naming the
            batch's structures and the term) or "skip" (no update; counted as ``skipped_batches``
            in the log). Weights are never updated with, nor saved with, non-finite values.
        seed: seeds parameters' initial values, data order and validation split.
        val_fraction: share of each fidelity's training structures held out for validation when
            no validation set is given.
        eval_batch_size: structures per batch in validation and test.
        best_metric: how the best-on-validation checkpoint is chosen, on the target fidelity:
            "weighted_mae" (Σ_t w_t MAE_t in eV/atom, eV/Å, GPa, μB) or "<target>_<mae|rmse>",
            e.g. "forces_mae".
        target_fidelity: fidelity name the best checkpoint is chosen on; None = the last one.
        patience: stop early when the validation ``best_metric`` has not improved for this many
            epochs (0 = train all ``epochs``); a "cos" schedule still spans ``epochs``.
        fit_composition: fit the composition model(s) by least squares before training.
        composition_reference: what that fit explains: "labels" (the energy labels, as from
            scratch), "residual" (E − E_model, the model's own prediction: a per-element correction
            added to its current weights, for a model that starts from trained weights) or "auto"
            (residual when the model starts from trained weights: pretrained, warm-started, fine-tuned
            from an mfwrap model; labels otherwise).
        freeze: parameter-name prefixes to freeze (requires_grad = False), e.g. "atom_embedding".
        compile: take training steps with ``mfwrap.compile_model(model)`` (torch.compile; forces and
            stress inside the graph, one backward): True (inductor) or the name of a
            ``torch.compile`` backend. The first step compiles (minutes on a CPU, then cached on
            disk, see :func:`mfwrap.compile_model`); one process only; validation and test run
            eagerly.
        checkpoint_every: also write ``last.pt`` every this many optimiser steps (0 = only at the
            end of each epoch).
        output_dir: where checkpoints and metric logs go (written in a config file: relative to its folder).
        device: "auto" (CUDA if available, else CPU), "cpu", "cuda", "cuda:1", ...
        progress: report on stderr: a line on what each stage trains and validates on, then
            tqdm progress bars on a terminal, else (stderr not a terminal, or the CI variable
            set) one line per epoch (loss, validation MAE at the target fidelity, lr, seconds);
            False = silent.
    """

    targets: str = "efsm"
    epochs: int = 60
    batch_size: int = 4
    lr: float = 0.005
    lr_min_fraction: float = 0.01
    scheduler: str = "cos"
    plateau_patience: int = 2
    plateau_factor: float = 0.3
    weight_decay: float = 0.0
    loss_weights: LossWeights = field(default_factory=LossWeights)
    fidelity_loss_weights: dict[str, float] = field(default_factory=dict)
    fidelity_sampling: dict[str, float] = field(default_factory=dict)
    huber_delta: float = 0.1
    grad_clip: float = 0.0
    nonfinite: str = "error"
    seed: int = 0
    val_fraction: float = 0.1
    eval_batch_size: int = 16
    best_metric: str = "weighted_mae"
    target_fidelity: str | None = None
    patience: int = 0
    fit_composition: bool = True
    composition_reference: str = "auto"
    freeze: list[str] = field(default_factory=list)
    compile: bool | str = False
    checkpoint_every: int = 0
    output_dir: str = "runs/mfwrap"
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.loss_weights, Mapping):
            self.loss_weights = LossWeights(**self.loss_weights)
        parse_targets(self.targets)
        if self.nonfinite not in ("error", "skip"):
            raise ValueError(f"nonfinite must be 'error' or 'skip', got {self.nonfinite!r}")
        if self.composition_reference not in ("auto", "labels", "residual"):
            raise ValueError(
                f"composition_reference must be 'auto', 'labels' or 'residual', got {self.composition_reference!r}"
            )
        if self.scheduler not in ("cos", "constant", "plateau"):
            raise ValueError(f"scheduler must be 'cos', 'constant' or 'plateau', got {self.scheduler!r}")
        if self.plateau_patience < 1 or not 0.0 < self.plateau_factor < 1.0:
            raise ValueError(
                f"plateau_patience must be >= 1 and plateau_factor in (0, 1), got {self.plateau_patience} "
                f"and {self.plateau_factor}"
            )
        if not self.lr > 0:
            raise ValueError(
                f"lr must be > 0, got {self.lr}: the weights would never change (to only evaluate a model, use "
                "mfwrap evaluate or Trainer.evaluate)"
            )
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for option in ("fidelity_loss_weights", "fidelity_sampling"):
            bad = {
                name: value
                for name, value in getattr(self, option).items()
                if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0)
            }
            if bad:
                raise ValueError(f"{option} must be finite and positive, got {bad}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """Build from the ``train`` mapping of a run config (see :func:`from_mapping`)."""
        return from_mapping(cls, values, "train")

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(yaml.safe_load(Path(path).read_text()) or {})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


T = TypeVar("T")


def from_mapping(cls: type[T], values: Any, where: str) -> T:
    """An instance of dataclass ``cls`` from a YAML mapping, built after :func:`check_fields`; the
    class's own checks of values (ranges, choices) run as it is built, their errors prefixed with ``where``."""
    arguments = check_fields(cls, values, where)
    try:
        return cls(**arguments)
    except ValueError as error:
        raise ValueError(f"{where}: {error}" if where else str(error)) from None


def check_fields(cls: type, values: Any, where: str) -> dict[str, Any]:
    """``values`` (a mapping of some of ``cls``'s fields) checked against the fields' annotations, as
    keyword arguments of ``cls``: nested dataclasses built from mappings (recursively), ints taken as
    floats where a float is wanted, nothing else converted (``"2"`` is no integer, ``2.5`` no integer,
    ``true`` no number).

    ``where`` is the key path of ``values`` in the config (e.g. "model"; "" for the top level).
    Raises ValueError naming the key path and the known keys or the expected type."""
    known = [f.name for f in dataclasses.fields(cls)]
    if not isinstance(values, Mapping):
        raise ValueError(f"{where or 'the config'}: expected a mapping of {known}, got {_shown(values)}")
    unknown = [key for key in values if key not in known]
    if unknown:
        raise ValueError(f"{where or 'the config'}: unknown key(s) {unknown}; known are {known}")
    hints = typing.get_type_hints(cls)
    return {key: _typed(value, hints[key], f"{where}.{key}" if where else str(key)) for key, value in values.items()}


def _typed(value: Any, hint: Any, where: str) -> Any:
    """``value`` if it is of type ``hint`` (converted as :func:`check_fields` says); else ValueError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else from_mapping(hint, value, where)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        arms = [arm for arm in args if arm is not type(None)]
        if len(arms) == 1 and (typing.get_origin(arms[0]) in (list, dict) or dataclasses.is_dataclass(arms[0])):
            return _typed(value, arms[0], where)  # a container: its own error names the item that is wrong
        for arm in arms:
            try:
                return _typed(value, arm, where)
            except ValueError:
                continue
    elif origin is list and isinstance(value, list):
        return [_typed(item, args[0], f"{where}[{i}]") for i, item in enumerate(value)]
    elif origin is dict and isinstance(value, Mapping):
        return {_typed(k, args[0], f"{where} key"): _typed(v, args[1], f"{where}.{k}") for k, v in value.items()}
    elif hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif hint in (str, bool) and isinstance(value, hint):
        return value
    hint_yaml = ""
    if hint is float and isinstance(value, str) and re.fullmatch(r"[+-]?\d+(\.\d*)?[eE][+-]?\d+", value):
        hint_yaml = f" (YAML reads {value} as a string: write it with a decimal point, e.g. 1.0e-3)"
    raise ValueError(f"{where}: expected {_type_name(hint)}, got {_shown(value)}{hint_yaml}")


def _type_name(hint: Any) -> str:
    """``hint`` in words, for error messages."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(arm) for arm in args)
    if origin is list:
        return f"a list (each item {_type_name(args[0])})"
    if origin is dict:
        return f"a mapping (each key {_type_name(args[0])}, each value {_type_name(args[1])})"
    if dataclasses.is_dataclass(hint):
        return f"a mapping of {[f.name for f in dataclasses.fields(hint)]}"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _shown(value: Any) -> str:
    """``value`` and its YAML kind, for error messages."""
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list"}.get(type(value))
    kind = kind or ("a mapping" if isinstance(value, Mapping) else "null" if value is None else type(value).__name__)
    return f"{value!r} ({kind})"


@dataclass(frozen=True)
class FieldDoc:
    """One option of a config dataclass, as ``mfwrap train --help`` lists it.

    Attributes:
        name: the field's name (its YAML key).
        type: its annotation, as written.
        default: its default (a ``default_factory`` called); ``dataclasses.MISSING`` if required.
        help: the first sentence of its entry in the class docstring's "Attributes:" section.
    """

    name: str
    type: str
    default: Any
    help: str


def _first_sentence(text: str) -> str:
    """Up to the first full stop outside parentheses that ends a sentence ("e.g." and "i.e." do not)."""
    depth = 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if (
            char == "."
            and depth == 0
            and (i + 1 == len(text) or text[i + 1] == " ")
            and not text[: i + 1].endswith(("e.g.", "i.e."))
        ):
            return text[: i + 1]
    return text


def field_docs(cls: type) -> list[FieldDoc]:
    """The fields of dataclass ``cls``, each described by its entry in the class docstring's
    Google-style "Attributes:" section (``name: text``, continuation lines indented further).
    ValueError naming the fields that have no entry: every option is described where it is declared."""
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    entries: dict[str, str] = {}
    if "Attributes:" in lines:
        name = None
        for line in lines[lines.index("Attributes:") + 1 :]:
            entry = re.match(r"^ {4}(\w+): (.*)$", line)
            if entry:
                name, entries[entry.group(1)] = entry.group(1), entry.group(2)
            elif name is not None and line.startswith(" " * 8):
                entries[name] += " " + line.strip()
            else:
                break
    fields = dataclasses.fields(cls)
    missing = [f.name for f in fields if f.name not in entries]
    if missing:
        raise ValueError(f"{cls.__name__}: fields {missing} have no entry in the docstring's Attributes section")
    docs = []
    for f in fields:
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            default = dataclasses.asdict(default)
        kind = f.type if isinstance(f.type, str) else inspect.formatannotation(f.type)
        docs.append(FieldDoc(f.name, kind, default, _first_sentence(entries[f.name])))
    return docs
