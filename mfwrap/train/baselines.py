"""Multi-fidelity training and the usual alternatives, in one harness.

Methods (``Experiment.method``), all evaluated on the target fidelity (default: the last one):

* ``multi_fidelity`` — :class:`mfwrap.MultiFidelity` with ``model.mechanisms`` (any subset of
  "ECMR": the ablations of the seed paper) trained on all fidelities at once.
* ``single_fidelity`` — the plain backbone on the target-fidelity data only (the paper's N).
* ``transfer`` — pre-train the plain backbone on all other fidelities, then fine-tune it on the
  target fidelity with the embeddings and the atom / bond / angle convolutions frozen, as in the
  seed paper (Sec. 3.3): what stays trainable are the output heads that the backbone's fidelity
  spec names as ``readout`` and ``heads`` (for CHGNet the energy readout and the magmom head;
  :func:`transfer_freeze`). The composition model is refitted to the target fidelity's energies.
* ``delta`` — Δ-learning: pre-train a base model on the other fidelities (frozen afterwards), then
  learn a correction so that E_high = E_base + E_Δ (see :class:`~mfwrap.delta.DeltaModel`).
  ``delta_reference="labels"`` (classical Δ-learning) fits E_Δ to E_high − E_low on structures that
  carry *both* labels, which needs paired data: every target-fidelity training structure must
  also appear (same species, positions and cell within 1e-6 Å) at a lower fidelity, else it is an
  error. ``delta_reference="model"`` needs no pairs: it fits E_high − E_base(x), the base model's
  prediction standing in for the missing low-fidelity label. Magmoms are learnt by the correction
  directly (low fidelity has none). Predictions: base + correction, one forward each.

Every method fits its composition model the same way before training
(:func:`mfwrap.mechanisms.composition_fit.fit_composition`, ``train.fit_composition``): single-fidelity and
transfer on the target fidelity's energies, Δ on the residual E − E_base, multi-fidelity per
fidelity (C) or pooled (without C).

Stage one of ``transfer`` and ``delta`` uses ``TrainConfig`` with the ``pretrain`` overrides applied
and writes to ``output_dir/pretrain``; the final model goes to ``output_dir/<method>`` (Δ with
``delta_reference="labels"`` trains its correction in ``output_dir/delta/correction``). Each stage
logs (:func:`mfwrap.train.run_log.say`) and records in its ``metrics.json`` what it trains and
validates on; ``output_dir/metrics.json`` lists every stage (structures per fidelity it trains and
validates on, where its validation frames come from, epochs, optimiser steps, wall seconds) and
their totals.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch_geometric.data import Data

from mfwrap.data import keys as K
from mfwrap.delta import DeltaModel
from mfwrap.fidelity import resolve_fidelity
from mfwrap.files import write_text
from mfwrap.mechanisms.readout import READOUTS
from mfwrap.model_file import ELEMENTS_UNKNOWN, import_class
from mfwrap.multifidelity import MultiFidelity
from mfwrap.replay import ReplayConfig
from mfwrap.surgery import resolve_spec
from mfwrap.train.config import TrainConfig, check_fields, from_mapping
from mfwrap.train.distributed import DistributedContext
from mfwrap.train.metrics import count_by_fidelity, describe_data
from mfwrap.train.output_dir import claim_output_dir
from mfwrap.train.run_log import say
from mfwrap.train.trainer import Trainer

METHODS = ("multi_fidelity", "single_fidelity", "transfer", "delta")


@dataclass
class ModelConfig:
    """Which backbone, how initialised, and (multi_fidelity only) which mechanisms.

    Attributes:
        backbone: import path "module:Class" of the backbone.
        kwargs: constructor arguments (ignored when ``pretrained`` is set).
        pretrained: if set, ``Class.from_pretrained(pretrained)`` (e.g. CHGNet "0.3.0").
        mechanisms: subset of "ECMR" for the multi-fidelity wrapper ("" = plain backbone, shared heads).
        fidelity_init: multi_fidelity only: "zero" (every fidelity starts as the backbone: X_f = 0,
            W_F = 0, readout copies equal) or "random"
            (:meth:`~mfwrap.MultiFidelity.draw_fidelity_parameters`, right after the backbone is built
            under the run's seed).
        readout: multi_fidelity only: "copies" (independent readout copies, the paper's R) or
            "residual" (a shared readout plus per-fidelity residuals; see :class:`~mfwrap.MultiFidelity`).
        origin: multi_fidelity only: the fidelity that is the (pretrained) backbone, e.g. "mptrj_pbe"
            for CHGNet 0.3.0: its composition model stays the backbone's (``MultiFidelity(origin=)``).
    """

    backbone: str = "backbones.chgnet:CHGNet"
    kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None
    mechanisms: str = "ECMR"
    fidelity_init: str = "zero"
    readout: str = "copies"
    origin: str | None = None

    def __post_init__(self) -> None:
        if self.fidelity_init not in ("zero", "random"):
            raise ValueError(f"fidelity_init must be 'zero' or 'random', got {self.fidelity_init!r}")
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {list(READOUTS)}, got {self.readout!r}")
        if set(self.mechanisms) - set("ECMR"):
            raise ValueError(f"mechanisms must be a subset of 'ECMR' (\"\" for none), got {self.mechanisms!r}")

    def build_backbone(self) -> nn.Module:
        """The backbone, its class imported now (mfwrap imports no backbone before); ValueError naming
        ``model.backbone`` and the suite's backbones when the class path does not resolve."""
        try:
            cls = import_class(self.backbone)
        except (ImportError, AttributeError, ValueError) as error:
            from mfwrap.bench.backbones import BACKBONES

            known = sorted({b.class_path for b in BACKBONES.values()})
            raise ValueError(
                f"model.backbone {self.backbone!r} does not name a backbone class ({error}); "
                f"known backbones: {known}, or any 'module:Class' of a torch.nn.Module"
            ) from None
        if not self.pretrained:
            return cls(**self.kwargs)
        backbone = cls.from_pretrained(self.pretrained)
        backbone.trained_elements = ELEMENTS_UNKNOWN  # pretrained on elements mfwrap does not know
        return backbone


@dataclass
class Experiment:
    """One training run of one method (see the module docstring).

    Attributes:
        method: "multi_fidelity", "single_fidelity", "transfer" or "delta" (``METHODS``).
        model: the backbone and mechanisms.
        train: hyperparameters (of the final stage); ``train.output_dir`` is the run directory.
        pretrain: overrides of ``train`` for the pre-training stage of transfer / delta.
        transfer_freeze: parameter-name prefixes frozen when fine-tuning; None =
            :func:`transfer_freeze` (embeddings and message passing).
        delta_reference: "labels" (paired data) or "model" (base-model predictions).
        warm_start: multi_fidelity only: pre-train the plain backbone on the other fidelities first
            (stage one as for transfer), then wrap it and train on all fidelities; every
            fidelity starts from the pre-trained network (the mechanisms start as the identity).
        replay: multi_fidelity with ``model.origin`` only: pseudo-label replay
            (:class:`mfwrap.replay.ReplayConfig`): structures from its ``sources`` ("own": the
            target-fidelity training structures perturbed; "prototypes": the shipped diverse pool; a
            file), labelled by the backbone as it starts (the foundation model) at the origin fidelity,
            are added to the training frames (:func:`replay_graphs`); mix with ``train.fidelity_sampling``.
    """

    method: str = "multi_fidelity"
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pretrain: dict[str, Any] = field(default_factory=dict)
    transfer_freeze: list[str] | None = None
    delta_reference: str = "labels"
    warm_start: bool = False
    replay: ReplayConfig | None = None

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = from_mapping(ModelConfig, self.model, "model")
        if isinstance(self.replay, dict):
            self.replay = from_mapping(ReplayConfig, self.replay, "replay")
        if isinstance(self.train, dict):
            self.train = TrainConfig.from_dict(self.train)
        self.pretrain = check_fields(TrainConfig, self.pretrain, "pretrain")
        fixed = sorted({"output_dir", "target_fidelity"} & set(self.pretrain))
        if fixed:
            raise ValueError(f"pretrain: {fixed} are set by the method (output_dir/pretrain, the main other fidelity)")
        try:
            dataclasses.replace(self.train, **self.pretrain)  # stage one's config passes TrainConfig's checks
        except ValueError as error:
            raise ValueError(f"pretrain: {error}") from None
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.warm_start and self.method != "multi_fidelity":
            raise ValueError(f"warm_start is an option of multi_fidelity, not of {self.method}")
        if self.model.fidelity_init != "zero" and self.method != "multi_fidelity":
            raise ValueError(f"model.fidelity_init is an option of multi_fidelity, not of {self.method}")
        if self.model.readout != "copies" and self.method != "multi_fidelity":
            raise ValueError(f"model.readout is an option of multi_fidelity, not of {self.method}")
        if self.model.origin is not None and self.method != "multi_fidelity":
            raise ValueError(f"model.origin is an option of multi_fidelity, not of {self.method}")
        if self.replay is not None and (self.method != "multi_fidelity" or self.model.origin is None):
            raise ValueError(
                "replay labels structures at the origin fidelity of a multi_fidelity model: set method: "
                "multi_fidelity and model.origin (the fidelity of the pretrained model, e.g. mptrj_pbe)"
            )
        if self.delta_reference not in ("labels", "model"):
            raise ValueError(f"delta_reference must be 'labels' or 'model', got {self.delta_reference!r}")

    def run_config(self, pretraining: bool = False) -> dict[str, Any]:
        """What determines a stage besides its TrainConfig and data, compared on resuming
        (:class:`~mfwrap.train.trainer.Trainer`'s ``run_config``): for stage one the backbone and its
        initialisation, for the final stage the method and model options."""
        model = dataclasses.asdict(self.model)
        if pretraining:
            return {"model": {key: model[key] for key in ("backbone", "kwargs", "pretrained")}}
        options = ("method", "transfer_freeze", "delta_reference", "warm_start")
        replay = {"replay": dataclasses.asdict(self.replay)} if self.replay is not None else {}
        return {"model": model, **{key: getattr(self, key) for key in options}, **replay}


def _stage(config: TrainConfig, name: str, **overrides: Any) -> TrainConfig:
    return dataclasses.replace(config, output_dir=str(Path(config.output_dir) / name), **overrides)


def _of_fidelity(graphs: Sequence[Data] | None, keep: set[int]) -> list[Data] | None:
    """The graphs at the fidelities ``keep``; None if there are none."""
    return [g for g in graphs or () if int(g[K.FIDELITY]) in keep] or None


def transfer_freeze(backbone: nn.Module) -> list[str]:
    """Names of the parameters transfer learning freezes: all but those of the fidelity spec's
    ``readout``, ``heads`` and ``composition`` modules, i.e. the embeddings and message passing."""
    spec, _ = resolve_spec(backbone, None)
    keep = [*spec.readout, *spec.heads, *([spec.composition] if spec.composition else [])]
    frozen = []
    for name, _ in backbone.named_parameters():
        module_paths = [name.rsplit(".", depth)[0] for depth in range(1, name.count(".") + 1)]
        if not any(fnmatch(path, pattern) for path in module_paths for pattern in keep):
            frozen.append(name)
    return frozen


def pretrain_config(experiment: Experiment, validated_fidelity: str) -> TrainConfig:
    """TrainConfig of stage one (``output_dir/pretrain``): ``experiment.train`` with the ``pretrain``
    overrides, validated on ``validated_fidelity`` (the most frequent non-target fidelity)."""
    return _stage(experiment.train, "pretrain", target_fidelity=validated_fidelity, **experiment.pretrain)


def pretrains(experiment: Experiment) -> bool:
    """Whether the method starts with stage one (pre-training on the other fidelities)."""
    return experiment.method in ("transfer", "delta") or experiment.warm_start


def stage_dirs(experiment: Experiment) -> list[Path]:
    """The output directories of the experiment's training stages, in the order they train."""
    final = Path(experiment.train.output_dir) / experiment.method
    first = [Path(experiment.train.output_dir) / "pretrain"] if pretrains(experiment) else []
    paired = experiment.method == "delta" and experiment.delta_reference == "labels"
    correction = [final / "correction"] if paired else []
    return first + correction + [final]


def claim_output(
    experiment: Experiment, *, resume: bool = False, overwrite: bool = False, check_only: bool = False
) -> None:
    """:func:`~mfwrap.train.output_dir.claim_output_dir` for every stage of the experiment, before any
    trains: a stage directory holding a run needs ``resume`` or ``overwrite``; all must be writable."""
    for directory in stage_dirs(experiment):
        claim_output_dir(directory, resume=resume, overwrite=overwrite, check_only=check_only)


def initial_backbone(experiment: Experiment) -> nn.Module:
    """The backbone :func:`run_experiment` starts from: built (or loaded, with ``model.pretrained``)
    right after seeding torch with its first stage's seed (``pretrain`` overrides included where the
    method pre-trains). Build it once, make the graphs with its ``graph_spec``, and hand it to
    :func:`run_experiment` as ``backbone``: the run is the same as with the one built there (making
    graphs draws no torch random numbers)."""
    seed = experiment.pretrain.get("seed", experiment.train.seed) if pretrains(experiment) else experiment.train.seed
    torch.manual_seed(seed)
    return experiment.model.build_backbone()


def _pretrain(
    experiment: Experiment, fidelities: Sequence[str], target: int, train, val, resume: bool, base: nn.Module
) -> tuple[nn.Module, dict]:
    """Stage one of transfer / delta / warm start: the plain backbone ``base`` on every fidelity but the target."""
    others = set(range(len(fidelities))) - {target}
    low_train = _of_fidelity(train, others)
    if not low_train:
        raise ValueError(f"{experiment.method} needs training data at a fidelity other than {fidelities[target]!r}")
    counts = {f: sum(int(g[K.FIDELITY]) == f for g in low_train) for f in others}
    config = pretrain_config(experiment, fidelities[max(counts, key=counts.get)])
    low_val = _of_fidelity(val, others)
    if val and not low_val and config.val_fraction > 0:
        given = ", ".join(f"{name} {n}" for name, n in count_by_fidelity(val, fidelities).items())
        say(
            f"pretrain: the validation frames given ({given}) include none at {sorted(fidelities[f] for f in others)}, "
            f"the fidelities it trains on: it validates on val_fraction {config.val_fraction:g} of its training "
            "frames, held out (set pretrain: {val_fraction: 0} to train on all of them, keeping the last epoch)",
            config,
        )
    run_config = experiment.run_config(pretraining=True)
    summary = Trainer(base, config, fidelity_names=fidelities, run_config=run_config).fit(
        low_train, low_val, resume=resume
    )
    return base, summary


def paired_differences(high: Sequence[Data], low: Sequence[Data], tolerance: float = 1e-6) -> list[Data]:
    """Copies of ``high`` with labels high − low of the same structure (magmoms kept: high's own).

    Structures match when species, positions and cell agree within ``tolerance`` Å. A label is
    present in the result where both fidelities have it. ValueError if any structure has no twin.
    """

    def key(graph: Data) -> tuple:
        rounded = torch.cat([graph[K.POSITIONS].flatten(), graph[K.CELL].flatten()]).double() / tolerance
        return tuple(graph[K.ATOMIC_NUMBERS].tolist()), tuple(torch.round(rounded).long().tolist())

    twins = {key(g): g for g in low}
    missing = [i for i, g in enumerate(high) if key(g) not in twins]
    if missing:
        raise ValueError(
            f"Δ-learning with delta_reference='labels' needs paired data, but {len(missing)} of {len(high)} "
            f"target-fidelity training structures have no low-fidelity twin (first: index {missing[0]}); "
            "use delta_reference='model' to learn the difference to the base model's prediction instead"
        )
    result = []
    for graph in high:
        twin, diff = twins[key(graph)], graph.clone()
        for target in (K.ENERGY, K.FORCES, K.STRESS):
            diff[target] = graph[target] - twin[target]
            diff[K.mask_key(target)] = graph[K.mask_key(target)] & twin[K.mask_key(target)]
        result.append(diff)
    return result


def run_experiment(
    experiment: Experiment,
    fidelities: Sequence[str],
    train: Sequence[Data],
    val: Sequence[Data] | None = None,
    test: Sequence[Data] | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    backbone: nn.Module | None = None,
) -> dict[str, Any]:
    """Train ``experiment.method``; returns the final stage's summary (best epoch, val and test metrics,
    its epochs and steps) with ``stages`` and ``total`` added (:func:`write_run_record`).

    Graphs carry fidelity indices into ``fidelities`` and must be built with the backbone's
    ``graph_spec``. ``resume`` continues every stage from its ``last.pt`` (a finished stage is
    not retrained, only re-evaluated); ``overwrite`` replaces the runs that the stage directories
    hold, which are an error with neither (:func:`claim_output`, before any training). ``backbone``:
    the one :func:`initial_backbone` built (and whose ``graph_spec`` made the graphs), trained in
    place; None = built here the same way.
    """
    config = experiment.train
    option = "train.target_fidelity"
    target = resolve_fidelity(fidelities, config.target_fidelity, default=fidelities[-1], option=option)
    target_name = fidelities[target]
    final = _stage(config, experiment.method, target_fidelity=target_name)
    high_train, high_val, high_test = (_of_fidelity(x, {target}) for x in (train, val, test))
    if not high_train:
        raise ValueError(f"no training structure at the target fidelity {target_name!r}")
    claim_output(experiment, resume=resume, overwrite=overwrite)

    def on_target(model: nn.Module, stage: TrainConfig) -> dict[str, Any]:
        trainer = Trainer(model, stage, fidelity_names=fidelities, run_config=run_config)
        return trainer.fit(high_train, high_val, high_test, resume=resume)

    backbone = backbone if backbone is not None else initial_backbone(experiment)
    run_config = experiment.run_config()
    stages: list[dict[str, Any]] = []  # stage_record of each stage, in the order trained
    evaluated = None  # Δ with paired labels: its last stage evaluates base + correction, trains nothing
    if pretrains(experiment):
        backbone, summary = _pretrain(experiment, fidelities, target, train, val, resume, backbone)
        stages.append(stage_record("pretrain", summary))

    if experiment.method == "multi_fidelity":
        origin = experiment.model.origin
        if origin is not None:
            resolve_fidelity(fidelities, origin, option="model.origin")
        if experiment.replay is not None:
            train = [*train, *replay_graphs(experiment, backbone, fidelities, high_train)]
        model = MultiFidelity(
            backbone, fidelities, experiment.model.mechanisms, readout=experiment.model.readout, origin=origin
        )
        if experiment.model.fidelity_init == "random":
            model.draw_fidelity_parameters()  # RNG seeded by initial_backbone (or by the pre-training)
        summary = Trainer(model, final, run_config=run_config).fit(train, val, test, resume=resume)
    elif experiment.method == "single_fidelity":
        dropped = count_by_fidelity([g for g in (*train, *(val or ())) if int(g[K.FIDELITY]) != target], fidelities)
        if dropped:
            say(
                f"single_fidelity: trains and validates at {target_name!r} only; the {sum(dropped.values())} training "
                f"and validation structures at other fidelities are left out "
                f"({', '.join(f'{name} {n}' for name, n in dropped.items())})",
                config,
            )
        summary = on_target(backbone, final)
    elif experiment.method == "transfer":
        freeze = experiment.transfer_freeze if experiment.transfer_freeze is not None else transfer_freeze(backbone)
        summary = on_target(backbone, dataclasses.replace(final, freeze=list(freeze)))
    else:
        torch.manual_seed(config.seed + 1)
        # the correction starts from fresh weights, with the base's architecture
        correction = (
            type(backbone)(**backbone.config) if hasattr(backbone, "config") else experiment.model.build_backbone()
        )
        model = DeltaModel(backbone, correction)
        if experiment.delta_reference == "model":
            summary = on_target(model, final)
        else:
            others = _of_fidelity(train, set(range(len(fidelities))) - {target})
            fitted = Trainer(
                correction, _stage(final, "correction"), fidelity_names=fidelities, run_config=run_config
            ).fit(paired_differences(high_train, others), resume=resume)
            stages.append(stage_record("correction", fitted))
            started = time.perf_counter()
            summary = _evaluate_delta(model, final, fidelities, fitted, high_val, high_test)
            data = describe_data([], high_val, fidelities, held_out=None)
            evaluated = {"data": data, "epochs_run": 0, "steps": 0, "wall_s": time.perf_counter() - started}
    stages.append(stage_record(experiment.method, evaluated or summary))
    return {**summary, **write_run_record(experiment, target_name, stages)}


def replay_graphs(
    experiment: Experiment, backbone: nn.Module, fidelities: Sequence[str], own: Sequence[Data]
) -> list[Data]:
    """The replay frames of ``experiment.replay`` as graphs at the origin fidelity: structures from its
    sources (``own``: the target-fidelity training graphs' structures) labelled by ``backbone`` as it is
    now, before training (:func:`mfwrap.replay.build_replay`, cached with provenance)."""
    from mfwrap.data.graph import graph_atoms
    from mfwrap.data.readers import to_graphs
    from mfwrap.replay import build_replay

    records = build_replay(
        backbone,
        experiment.replay,
        [graph_atoms(g) for g in own],
        origin=experiment.model.origin,
        log=lambda line: say(line, experiment.train),
    )
    dtype = own[0][K.POSITIONS].dtype if own else torch.get_default_dtype()
    return to_graphs(records, backbone.graph_spec, list(fidelities), dtype=dtype)


def _evaluate_delta(
    model: DeltaModel, final: TrainConfig, fidelities: Sequence[str], fitted: dict, val, test
) -> dict[str, Any]:
    """The last stage of Δ with paired labels: base + fitted correction, evaluated (no training) and saved."""
    evaluator = Trainer(model, final, fidelity_names=fidelities)
    summary = {
        "best": None,
        "val": evaluator.evaluate(val) if val else None,
        "test": evaluator.evaluate(test) if test else None,
        "stopped": False,
        "steps": fitted.get("steps"),
        "epochs_run": fitted.get("epochs_run"),
    }
    evaluator.save_model(Path(final.output_dir) / "best.pt", {"epoch": None, **summary})
    return summary


def stage_record(stage: str, summary: dict[str, Any]) -> dict[str, Any]:
    """One stage in ``output_dir/metrics.json``, from its :meth:`Trainer.fit` summary: structures per
    fidelity it trains and validates on, where its validation frames come from (``val_source``:
    "given", "held out" of its training frames with ``val_fraction``, "none"), epochs, optimiser
    steps and wall seconds."""
    data = summary.get("data", {})
    return {
        "stage": stage,
        "trains_on": data.get("train", {}),
        "validates_on": data.get("val", {}),
        **{key: value for key, value in data.items() if key not in ("train", "val")},
        "epochs_run": summary.get("epochs_run"),
        "steps": summary.get("steps") or 0,
        "wall_s": summary.get("wall_s") or 0.0,
    }


def write_run_record(experiment: Experiment, target: str, stages: list[dict[str, Any]]) -> dict[str, Any]:
    """Write ``output_dir/metrics.json`` (main process): the method, the target fidelity, every
    stage (:func:`stage_record`) and their total steps and wall seconds; log a line with the totals.
    Returns ``{"stages", "total"}``."""
    total = {"steps": sum(r["steps"] for r in stages), "wall_s": sum(r["wall_s"] for r in stages)}
    record = {"method": experiment.method, "target_fidelity": target, "stages": stages, "total": total}
    config = experiment.train
    if DistributedContext.from_env().is_main:
        Path(config.output_dir).mkdir(parents=True, exist_ok=True)
        write_text(Path(config.output_dir) / "metrics.json", json.dumps(record, indent=1) + "\n")
    steps = " + ".join(f"{r['steps']} ({r['stage']})" for r in stages) + " = " if len(stages) > 1 else ""
    say(f"{experiment.method}: {steps}{total['steps']} optimiser steps in {total['wall_s']:.1f} s", config)
    return {"stages": stages, "total": total}
