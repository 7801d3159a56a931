"""A foundation model gains a fidelity: the methods users have, at equal compute, measured three ways.

Starting point (a :class:`Case` of :data:`CASES`): a pretrained potential (CHGNet 0.3.0 or SevenNet-0:
MPtrj PBE/PBE+U, the *origin* fidelity) and N_high frames at a new level of theory: LMFP labelled by
the CHGNet r2SCAN teacher ("high"; LMFP's "low" teacher *is* CHGNet 0.3.0, so for CHGNet 0.3.0 "low" is
the origin), or Li3PS4's real r2SCAN energies (with real PBEsol energies and forces of the same
structures as a third fidelity for the methods that use it).

Methods (:data:`METHODS`), every trained one the same optimiser steps (those of MF over N_high + replay
frames in ``mf_epochs`` epochs; batch 4, cosine schedule from ``lr``, best checkpoint on the N_val
high-fidelity validation frames):

* ``foundation`` — the pretrained model as it is (no training).
* ``foundation_refit`` — only its composition refitted to the residual of its prediction on the
  N_high frames (:mod:`mfwrap.mechanisms.composition_fit`), no gradient step.
* ``finetune`` — all weights on the high fidelity, composition as pretrained (what most users do).
* ``finetune_refit`` — the same after the residual composition refit (Huang et al.'s best transfer
  variant refits the reference energies).
* ``transfer`` — residual refit, then only the readout heads train (embeddings and message passing frozen).
* ``delta`` — Δ-learning on the foundation model's prediction: a fresh network of the same architecture
  learns E_high − E_foundation.
* ``mf_ecmr_replay``, ``mf_rc_replay``, ``mf_mc_replay`` — :class:`mfwrap.MultiFidelity` from the
  pretrained model with its origin (mechanisms ECMR: the seed paper; RC: a readout and reference
  energies per fidelity, the recipe of MACE's multi-head fine-tuning; MC: one-hot in the linears and
  per-fidelity shifts, SevenNet's multi-modal recipe), trained on the N_high frames and pseudo-label
  replay (:mod:`mfwrap.replay`: the user's structures perturbed and prototype structures, labelled by
  the frozen foundation model at the origin), sampled 1 : 1; variants replay prototypes only, sample the
  new fidelity twice as often, or add the real lower fidelity (``mf_real_low``, with prototype replay
  ``mf_real_low_prototypes``).

Measured (:func:`measure`): **in-domain** error at the high fidelity on the data set's test frames;
**out-of-domain** error at the high fidelity on other chemistries (:mod:`mfwrap.datasets.other_chemistries`,
prototypes the replay pool never draws from, without LMFP's elements); **forgetting**: the origin
fidelity's (a single-fidelity model's own) error against the foundation model's predictions on the
same other chemistries, and where the data set has a real lower fidelity, the origin's error against
its labels of the test structures. Errors: energy meV/atom, forces meV/Å, stress GPa (MAE).

:mod:`mfwrap.bench.foundation_runs` runs it (``mfwrap bench foundation``), one file per finished run.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch_geometric.data import Data

FOUNDATION = "backbones.chgnet:CHGNet"  # with pretrained "0.3.0"; by class path: mfwrap imports no backbone
FIDELITIES = ("low", "high")  # LMFP's: low = CHGNet 0.3.0 = the foundation model (the origin)
ORIGIN, TARGET = FIDELITIES


@dataclass(frozen=True)
class Case:
    """A foundation model and a data set: which fidelity the model's own is, which one it gains.

    Attributes:
        name: its key in :data:`CASES`.
        dataset: a :data:`mfwrap.datasets.registry.DATASETS` name.
        foundation: class path of the backbone; ``pretrained``: its weights (``from_pretrained``).
        label: how tables name the foundation model.
        origin: the foundation model's fidelity (a data fidelity when the data carry its labels).
        target: the fidelity it gains (the data set's high fidelity).
        real_low: a real lower fidelity of the data set other than the origin (Li3PS4: PBEsol), or None.
        ood_origin_teacher: the other-chemistries labels that are the foundation model's own ("low": CHGNet
            0.3.0 is their low teacher); None: the foundation model labels them here.
        teacher_note: what the high-fidelity labels are, for the tables.
    """

    name: str
    dataset: str
    foundation: str
    pretrained: str
    label: str
    origin: str
    target: str
    real_low: str | None = None
    ood_origin_teacher: str | None = None
    teacher_note: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        """Fidelity names of every model and graph of the case: the origin, then the data set's others."""
        from mfwrap.datasets.registry import DATASETS

        return (self.origin, *(f for f in DATASETS[self.dataset].fidelities if f != self.origin))


CASES: dict[str, Case] = {
    c.name: c
    for c in (
        Case(
            "lmfp_chgnet030",
            "lmfp",
            FOUNDATION,
            "0.3.0",
            "CHGNet 0.3.0",
            ORIGIN,
            TARGET,
            ood_origin_teacher="low",
            teacher_note="LMFP labelled by the CHGNet r2SCAN teacher (itself CHGNet transfer-learned from a PBE "
            "CHGNet on MP-r2SCAN: it flatters methods that stay close to the foundation model); LMFP's low "
            "fidelity is CHGNet 0.3.0 itself, so the origin",
        ),
        Case(
            "li3ps4_chgnet030",
            "li3ps4",
            FOUNDATION,
            "0.3.0",
            "CHGNet 0.3.0",
            "mptrj",
            "r2scan",
            real_low="pbesol",
            ood_origin_teacher="low",
            teacher_note="Li3PS4 real DFT: r2SCAN energies (no forces), PBEsol energies and forces of the same "
            "structures; the origin is CHGNet 0.3.0's own MPtrj PBE/PBE+U",
        ),
        Case(
            "lmfp_sevenn0",
            "lmfp",
            "backbones.sevenn:SevenNet",
            "7net-0",
            "SevenNet-0",
            "mptrj",
            TARGET,
            teacher_note="LMFP labelled by the CHGNet r2SCAN teacher; the origin is SevenNet-0's own MPtrj PBE/PBE+U "
            "(LMFP's low fidelity, CHGNet 0.3.0, is not used)",
        ),
    )
}


@dataclass(frozen=True)
class Setup:
    """What a run of the foundation experiment needs (:func:`prepare`)."""

    case: Case
    seed: int
    n_high: int
    foundation: nn.Module
    train: list[Data]  # the N_high high-fidelity training frames
    val: list[Data]
    test: list[Data]
    replay: list[Data]  # pseudo-labels of the foundation model at the origin
    ood_high: list[Data]  # other chemistries, labelled by the high-fidelity teacher
    ood_origin: list[Data]  # the same structures, labelled by the foundation model
    replay_provenance: dict[str, Any]
    cache_dir: str | None = None
    train_low: list[Data] = dataclasses.field(default_factory=list)  # real lower-fidelity frames (case.real_low)
    real_low_test: list[Data] = dataclasses.field(default_factory=list)  # test structures' real_low labels, as origin


@dataclass(frozen=True)
class Options:
    """The experiment's settings (every method the same)."""

    n_high: int = 25
    n_val: int = 10
    mf_epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 4
    replay_n: int = 300
    replay_sources: tuple[str, ...] = ("own", "prototypes")
    ood_n: int = 100
    case: str = "lmfp_chgnet030"

    def __post_init__(self) -> None:
        if self.case not in CASES:
            raise ValueError(f"unknown foundation case {self.case!r}; known are {list(CASES)}")

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "replay_sources": list(self.replay_sources)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Options:
        return cls(**{**data, "replay_sources": tuple(data["replay_sources"])})


def _relabel(records, fidelity: str):
    from mfwrap.data.readers import LabelledStructure

    return [LabelledStructure(r.atoms, fidelity, r.labels, r.name) for r in records]


def prepare(seed: int, options: Options, cache_dir: str | None = None, log: Callable[[str], None] = print) -> Setup:
    """The data split of ``seed``, the foundation model, its replay set and the other-chemistries sets."""
    from mfwrap.data.readers import to_graphs
    from mfwrap.datasets.other_chemistries import load_other_chemistries
    from mfwrap.datasets.registry import DATASETS, Split, li3ps4_records
    from mfwrap.replay import ReplayConfig, build_replay
    from mfwrap.replay.cache import cache_key, replay_dir
    from mfwrap.replay.labels import pseudo_label
    from mfwrap.replay.structures import as_atoms
    from mfwrap.train.baselines import ModelConfig

    case = CASES[options.case]
    foundation = ModelConfig(backbone=case.foundation, pretrained=case.pretrained).build_backbone()
    graphs = lambda records: to_graphs(records, foundation.graph_spec, list(case.names))  # noqa: E731
    dataset = DATASETS[case.dataset]
    n_val = None if dataset.ships_validation else options.n_val
    split = dataset.split(Split(seed=seed, n_high=options.n_high, n_val=n_val, cache_dir=cache_dir))
    config = ReplayConfig(sources=list(options.replay_sources), n=options.replay_n, seed=seed, cache_dir=cache_dir)
    own = [r.atoms for r in split.train_high]
    replay = build_replay(foundation, config, own, origin=case.origin, log=log)
    key = cache_key(foundation, config, [as_atoms(a) for a in own], case.origin, None, None)
    provenance = json.loads((replay_dir(config, key) / "provenance.json").read_text())  # what labelling cost
    other = load_other_chemistries(n=options.ood_n, seed=0, cache_dir=cache_dir)
    if case.ood_origin_teacher is not None:
        ood_origin = _relabel(other[case.ood_origin_teacher], case.origin)
    else:
        ood_origin = pseudo_label(foundation, [r.atoms for r in other[TARGET]], name=case.origin)
    real_low_test = []
    if case.real_low is not None and case.dataset == "li3ps4":
        real_low_test = graphs(_relabel(li3ps4_records("test", case.real_low), case.origin))
    return Setup(
        case=case,
        seed=seed,
        n_high=options.n_high,
        foundation=foundation,
        train=graphs(split.train_high),
        val=graphs(split.val),
        test=graphs(split.test),
        replay=graphs(replay),
        ood_high=graphs(_relabel(other[TARGET], case.target)),
        ood_origin=graphs(ood_origin),
        replay_provenance=dict(provenance),
        cache_dir=cache_dir,
        train_low=graphs(split.train_low) if case.real_low is not None else [],
        real_low_test=real_low_test,
    )


@dataclass(frozen=True)
class Method:
    """One method: its label, whether it trains, and how it builds its model, data and trainer options."""

    name: str
    label: str
    build: Callable[[Setup], tuple[nn.Module, list[Data], dict[str, Any]]] | None
    multi_fidelity: bool = False
    needs_real_low: bool = False  # trains on the data set's real lower fidelity (Case.real_low)


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def _finetune(setup: Setup, refit: bool):
    options = {"fit_composition": refit, "composition_reference": "residual"}
    return _copy(setup.foundation), setup.train, options


def _transfer(setup: Setup):
    from mfwrap.train.baselines import transfer_freeze

    model = _copy(setup.foundation)
    return model, setup.train, {"freeze": transfer_freeze(model), "composition_reference": "residual"}


def _delta(setup: Setup):
    from mfwrap.delta import DeltaModel

    torch.manual_seed(setup.seed + 1)
    base = _copy(setup.foundation)
    correction = type(base)(**base.config)
    return DeltaModel(base, correction), setup.train, {"composition_reference": "labels"}


def _mf(
    mechanisms: str,
    sources: tuple[str, ...] | None = None,
    high_share: float = 1.0,
    real_low: bool = False,
    replay: bool = True,
):
    """MF from the foundation model, trained on the high-fidelity frames and the replay set (that of
    ``Options.replay_sources``, or one as large from ``sources``), sampled replay : high = 1 : ``high_share``;
    with ``real_low`` also the data set's real lower fidelity (share 1); without ``replay``, no replay."""

    def build(setup: Setup):
        import mfwrap

        case = setup.case
        train, sampling = list(setup.train), {case.target: high_share}
        if replay:
            train += setup.replay if sources is None else _other_replay(setup, sources)
            sampling[case.origin] = 1.0
        if real_low:
            train += setup.train_low
            sampling[case.real_low] = 1.0
        model = mfwrap.MultiFidelity(setup.foundation, list(case.names), mechanisms, origin=case.origin)
        return model, train, {"fidelity_sampling": sampling, "composition_reference": "residual"}

    return build


def _other_replay(setup: Setup, sources: tuple[str, ...]) -> list[Data]:
    """A replay set of the same size and seed as ``setup.replay`` from other ``sources`` (no "own")."""
    from mfwrap.data.graph import graph_atoms
    from mfwrap.data.readers import to_graphs
    from mfwrap.replay import ReplayConfig, build_replay

    config = ReplayConfig(sources=list(sources), n=len(setup.replay), seed=setup.seed, cache_dir=setup.cache_dir)
    own = [graph_atoms(g) for g in setup.train]  # their elements join the prototypes' decorations
    records = build_replay(setup.foundation, config, own, origin=setup.case.origin, log=None)
    return to_graphs(records, setup.foundation.graph_spec, list(setup.case.names))


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("foundation", "the foundation model as it is", None),
        Method("foundation_refit", "the foundation model, composition refitted (residual)", None),
        Method("finetune", "fine-tune all weights", lambda s: _finetune(s, refit=False)),
        Method("finetune_refit", "fine-tune all weights, composition refitted", lambda s: _finetune(s, refit=True)),
        Method("transfer", "transfer (frozen body), composition refitted", _transfer),
        Method("delta", "Δ on the foundation model", _delta),
        Method("mf_ecmr_replay", "MF ECMR + replay 1:1", _mf("ECMR"), multi_fidelity=True),
        Method("mf_rc_replay", "MF RC + replay 1:1 (multi-head recipe)", _mf("RC"), multi_fidelity=True),
        Method("mf_mc_replay", "MF MC + replay 1:1 (multi-modal recipe)", _mf("MC"), multi_fidelity=True),
        # chosen on the validation frames of seed 0 (energy 3.4 vs 13.0 meV/atom): the user's own structures
        # replayed at the origin hold the shared network at the origin's energies on the very chemistry
        # the new fidelity is learnt on
        Method(
            "mf_ecmr_prototypes",
            "MF ECMR + prototype replay only 1:1",
            _mf("ECMR", ("prototypes",)),
            multi_fidelity=True,
        ),
        # then, on seed 0's validation frames: sampling the high fidelity twice as often (energy 1.9 vs 3.4
        # meV/atom, forces 49 vs 50 meV/Å); a lower learning rate (3e-4) was worse (9.4, 74)
        Method(
            "mf_ecmr_prototypes_2to1",
            "MF ECMR + prototype replay only 1:2",
            _mf("ECMR", ("prototypes",), high_share=2.0),
            multi_fidelity=True,
        ),
        # with the data set's real lower fidelity (Li3PS4: PBEsol energies and forces of every training
        # structure) as a third fidelity, without and with prototype replay at the origin
        Method(
            "mf_real_low",
            "MF ECMR + real low fidelity, no replay",
            _mf("ECMR", real_low=True, replay=False),
            multi_fidelity=True,
            needs_real_low=True,
        ),
        Method(
            "mf_real_low_prototypes",
            "MF ECMR + real low fidelity + prototype replay",
            _mf("ECMR", ("prototypes",), real_low=True),
            multi_fidelity=True,
            needs_real_low=True,
        ),
    )
}


def epochs_of(method: Method, setup: Setup, options: Options, n_own: int | None = None) -> int:
    """Epochs giving ``method`` (``n_own`` training frames; default: those it trains on) the optimiser steps
    MF takes in ``options.mf_epochs`` epochs over the high-fidelity and replay frames."""
    from mfwrap.bench.grid import in_own_epochs

    n_mf = len(setup.train) + len(setup.replay)
    if n_own is None:
        n_own = n_mf if method.multi_fidelity else len(setup.train)
    return in_own_epochs(options.mf_epochs, n_mf, n_own, options.batch_size)


def _errors(model: nn.Module, graphs: Sequence[Data], fidelity: str, names: Sequence[str]) -> dict[str, float]:
    """MAE at ``fidelity``: energy meV/atom, forces meV/Å, stress GPa (the targets ``graphs`` label)."""
    from mfwrap.train.distributed import DistributedContext
    from mfwrap.train.evaluation import evaluate

    metrics = evaluate(
        model,
        graphs,
        fidelity_names=list(names),
        targets=["energy", "forces", "stress"],
        ctx=DistributedContext.from_env(),
        device=torch.device("cpu"),
        batch_size=16,
    )[fidelity]
    return {target: metrics[target]["mae"] for target in ("energy", "forces", "stress") if target in metrics}


def measure(model: nn.Module, setup: Setup) -> dict[str, dict[str, float]]:
    """In-domain, out-of-domain (both at the high fidelity) and forgetting (at the origin for a
    multi-fidelity model, the model itself otherwise) errors (module docstring); with a real lower
    fidelity, also the origin's error against its labels on the test structures (``forgetting_real``)."""
    case, names = setup.case, setup.case.names
    found = {
        "in_domain": _errors(model, setup.test, case.target, names),
        "out_of_domain": _errors(model, setup.ood_high, case.target, names),
        "forgetting": _errors(model, setup.ood_origin, case.origin, names),
    }
    if setup.real_low_test:
        found["forgetting_real"] = _errors(model, setup.real_low_test, case.origin, names)
    return found


def run_method(name: str, setup: Setup, options: Options, out_dir: str | Path) -> dict[str, Any]:
    """Train (or not) method ``name`` on ``setup``; returns its measures, steps and wall seconds."""
    import mfwrap
    from mfwrap.bench.backbones import predicts_magmoms
    from mfwrap.mechanisms.composition_fit import fit_composition
    from mfwrap.train import TrainConfig, Trainer

    method, case = METHODS[name], setup.case
    if method.needs_real_low and case.real_low is None:
        raise ValueError(f"method {name!r} needs a real lower fidelity; case {case.name!r} has none")
    started = time.perf_counter()
    if method.build is None:
        model = _copy(setup.foundation)
        if name == "foundation_refit":
            fit_composition(model, setup.train, residual=True)
        return {"measures": measure(model, setup), "steps": 0, "epochs": 0, "wall_s": time.perf_counter() - started}
    torch.manual_seed(setup.seed)
    model, train, trainer_options = method.build(setup)
    epochs = epochs_of(method, setup, options, n_own=len(train))
    config = TrainConfig(
        epochs=epochs,
        batch_size=options.batch_size,
        lr=options.lr,
        seed=setup.seed,
        target_fidelity=case.target,
        output_dir=str(out_dir),
        progress=False,
        targets="".join(t for t in "efsm" if t != "m" or predicts_magmoms(setup.foundation)),
        **trainer_options,
    )
    summary = Trainer(model, config, fidelity_names=list(case.names)).fit(train, setup.val)
    best = mfwrap.load(Path(out_dir) / "best.pt")
    return {
        "measures": measure(best, setup),
        "steps": summary.get("steps"),
        "epochs": epochs,
        "best_epoch": (summary.get("best") or {}).get("epoch"),
        "wall_s": time.perf_counter() - started,
    }


MEASURES = ("in_domain", "out_of_domain", "forgetting", "forgetting_real")
TARGET_NAMES = ("energy", "forces", "stress")


def summarise(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample standard deviation over seeds of every measure, per method (one case and N_high)."""
    import numpy as np

    by_method: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        by_method.setdefault(result["method"], []).append(result)
    summary = {}
    for name in METHODS:
        runs = by_method.get(name)
        if not runs:
            continue
        entry: dict[str, Any] = {"label": METHODS[name].label, "seeds": sorted(r["seed"] for r in runs)}
        for measure_name in MEASURES:
            if not any(measure_name in r["measures"] for r in runs):
                continue
            entry[measure_name] = {}
            for target in TARGET_NAMES:
                values = [r["measures"].get(measure_name, {}).get(target) for r in runs]
                values = [v for v in values if v is not None]
                if values:
                    entry[measure_name][target] = {
                        "mean": float(np.mean(values)),
                        "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                    }
        entry["steps"] = float(np.mean([r["steps"] or 0 for r in runs]))
        entry["wall_s"] = float(np.mean([r["wall_s"] for r in runs]))
        summary[name] = entry
    return summary


def _cell(entry: dict[str, Any], measure_name: str, targets: Sequence[str]) -> str:
    digits = {"energy": 1, "forces": 0, "stress": 3}
    parts = []
    for target in targets:
        value = entry.get(measure_name, {}).get(target)
        d = digits[target]
        parts.append("—" if value is None else f"{value['mean']:.{d}f} ± {value['std']:.{d}f}")
    return " / ".join(parts)


def table(summary: dict[str, Any], case: Case | None = None) -> str:
    """Markdown table of :func:`summarise`: E meV/atom / F meV/Å / S GPa per measure, mean ± std; out of domain
    without E (other chemistries have none of the fine-tuning elements, whose reference energies at the high
    fidelity no training frame can teach: that error is the teachers' reference offset, the same for every
    method); with a real lower fidelity, the origin's force error against it on the test structures."""
    case = case or CASES["lmfp_chgnet030"]
    real = case.real_low is not None
    in_domain = [t for t in TARGET_NAMES if any(t in e.get("in_domain", {}) for e in summary.values())]
    header = (
        f"| method | seeds | steps | in-domain ({case.target}) {' / '.join(t[0].upper() for t in in_domain)} "
        f"| other chemistries ({case.target}) F / S | forgetting vs {case.label} E / F / S |"
        + (f" origin vs real {case.real_low} F |" if real else "")
        + " wall s |"
    )
    lines = [header, "|" + " --- |" * (header.count("|") - 1)]
    for entry in summary.values():
        lines.append(
            f"| {entry['label']} | {len(entry['seeds'])} | {entry['steps']:.0f} "
            f"| {_cell(entry, 'in_domain', in_domain)} "
            f"| {_cell(entry, 'out_of_domain', ('forces', 'stress'))} "
            f"| {_cell(entry, 'forgetting', TARGET_NAMES)} |"
            + (f" {_cell(entry, 'forgetting_real', ('forces',))} |" if real else "")
            + f" {entry['wall_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    from mfwrap.files import write_text

    write_text(Path(path), json.dumps(payload, indent=1) + "\n")


def _mean(summary: dict[str, Any], method: str, measure_name: str, target: str) -> float | None:
    value = summary.get(method, {}).get(measure_name, {}).get(target)
    return None if value is None else value["mean"]


def _judge(passed: list[bool]) -> str:
    return "holds" if all(passed) else "partly" if any(passed) else "fails"


def verdicts(summary: dict[str, Any], method: str = "mf_ecmr_replay", reference: str = "finetune") -> list[str]:
    """The issue's targets for MF with replay, each "holds", "partly" or "fails" with its figures:
    in-domain within 5 % of the best method (the targets the test frames label), out of domain at the high
    fidelity no worse than the fine-tuning ``reference`` (F, S), forgetting at most 20 % of the reference's
    (E, F, S). Methods that do not train (the foundation model itself) are not candidates for the best."""
    if method not in summary or reference not in summary:
        return []
    lines = []
    passed, parts = [], []
    for target in TARGET_NAMES:
        values = {m: _mean(summary, m, "in_domain", target) for m in summary if METHODS[m].build is not None}
        values = {m: v for m, v in values.items() if v is not None}
        if method not in values:
            continue
        best = min(values, key=values.get)
        ours = values[method]
        passed.append(ours <= 1.05 * values[best])
        parts.append(f"{target} {ours:.4g} vs {values[best]:.4g} ({summary[best]['label']})")
    lines.append(f"in-domain within 5 % of the best method: **{_judge(passed)}** — " + "; ".join(parts))
    passed, parts = [], []
    for target in ("forces", "stress"):
        ours, theirs = (_mean(summary, m, "out_of_domain", target) for m in (method, reference))
        passed.append(ours <= theirs)
        parts.append(f"{target} {ours:.4g} vs {theirs:.4g}")
    lines.append(f"out of domain no worse than fine-tuning: **{_judge(passed)}** — " + "; ".join(parts))
    passed, parts = [], []
    for target in TARGET_NAMES:
        ours, theirs = (_mean(summary, m, "forgetting", target) for m in (method, reference))
        passed.append(ours <= 0.2 * theirs)
        parts.append(f"{target} {ours:.4g} vs {theirs:.4g} ({ours / theirs:.0%})")
    lines.append(f"forgetting at most 20 % of fine-tuning's: **{_judge(passed)}** — " + "; ".join(parts))
    return lines


# The MF methods the targets are judged for (the paper's mechanisms with the 1:1 replay; then the
# variants chosen on validation frames), against plain fine-tuning and fine-tuning with the refit.
JUDGED = ("mf_ecmr_replay", "mf_ecmr_prototypes", "mf_ecmr_prototypes_2to1", "mf_real_low_prototypes")
REFERENCES = ("finetune", "finetune_refit")


def _groups(payload: dict[str, Any]):
    """(case, N_high, summary) of the aggregate, in the order of :data:`CASES` and N_high."""
    for name in CASES:
        for n_high, summary in sorted(payload["summary"].get(name, {}).items(), key=lambda kv: int(kv[0])):
            yield CASES[name], int(n_high), summary


def verdict_rows(payload: dict[str, Any]) -> list[tuple[Case, int, str, str, list[str]]]:
    """(case, N_high, MF method, reference, verdict lines) for every judged pair present."""
    return [
        (case, n_high, method, reference, found)
        for case, n_high, summary in _groups(payload)
        for method in JUDGED
        for reference in REFERENCES
        if (found := verdicts(summary, method=method, reference=reference))
    ]


def claims_markdown(payload: dict[str, Any]) -> str:
    """The targets' verdicts for ``claims.md``: one line per target, the evidence per case, N_high and pair."""
    rows = verdict_rows(payload)
    lines = [
        "### Foundation models gaining a fidelity (issue 29's targets)",
        "",
        "MF with replay from a pretrained model against fine-tuning at equal optimiser steps, means over the "
        "seeds of `foundation.json` (in-domain: test frames at the new fidelity; out of domain: other chemistries "
        "at the new fidelity; forgetting: against the foundation model's own predictions there). A target holds "
        "where every comparison under it does.",
        "",
    ]
    claims = (  # (title, which verdict line, against which fine-tuning: None = the best method)
        ("MF with replay in-domain within 5 % of the best method", 0, None),
        ("MF with replay out of domain no worse than plain fine-tuning", 1, "finetune"),
        ("MF with replay forgets at most 20 % of what plain fine-tuning forgets", 2, "finetune"),
        ("(stricter) MF with replay out of domain no worse than fine-tuning with the refit", 1, "finetune_refit"),
        (
            "(stricter) MF with replay forgets at most 20 % of what fine-tuning with the refit forgets",
            2,
            "finetune_refit",
        ),
    )
    for title, index, reference in claims:
        if reference is None:  # in-domain does not depend on the fine-tuning compared: once per case, N_high and MF
            chosen = list({(r[0].name, r[1], r[2]): r for r in reversed(rows)}.values())[::-1]
        else:
            chosen = [r for r in rows if r[3] == reference]
        outcomes = [found[index].split("**")[1] for *_, found in chosen]
        status = "not measured" if not outcomes else _judge([o == "holds" for o in outcomes])
        if outcomes and status == "fails" and any(o == "partly" for o in outcomes):
            status = "partly"
        lines.append(f"- **{status}** — {title}")
        for case, n_high, method, _, found in chosen:
            lines.append(
                f"  - {case.label} on {case.dataset}, N_high {n_high}, {METHODS[method].label}: "
                f"{found[index].split(': ', 1)[1]}"
            )
    return "\n".join(lines) + "\n"


def render(payload: dict[str, Any]) -> str:
    """``foundation.md``: the settings, one table per case and N_high, the cost and the verdicts."""
    options = payload["options"]
    text = (
        "### Foundation models gain a fidelity\n\n"
        "A pretrained potential gains a fidelity from N_high frames at a new level of theory. Every trained "
        f"method takes the optimiser steps of MF in {options['mf_epochs']} epochs over the high-fidelity and "
        f"{options['replay_n']} replay frames (labelled by the frozen foundation model at its own fidelity, the "
        f"origin); learning rate {options['lr']:g}, cosine, batch {options['batch_size']}; the validation frames "
        "pick the best checkpoint. Training runs whole epochs, so a method whose epoch is long (the real lower "
        "fidelity's frames added) takes up to half an epoch fewer or more steps: the steps column says. "
        "In-domain: the data set's test frames at the new fidelity; other chemistries: "
        f"{options['ood_n']} structures of AFLOW prototypes that the replay pool never draws, without LMFP's "
        "elements, labelled by the CHGNet r2SCAN teacher (energy left out: reference energies of elements the "
        "training frames lack cannot be learnt); forgetting: the origin fidelity's (a single-fidelity model's own) "
        "error against the foundation model on those structures. MAE, mean ± standard deviation over seeds, "
        "E meV/atom / F meV/Å / S GPa. MF variants below the paper's 1:1 replay of own + prototype structures "
        "were chosen on seed 0's validation frames (the test frames decided nothing).\n"
    )
    if lines := headline(payload):
        text += "\nIn short (means over seeds; forces in meV/Å, energies in meV/atom):\n\n" + "\n".join(lines) + "\n"
    for case, n_high, summary in _groups(payload):
        case_options = payload["options_by_case"][case.name]
        text += (
            f"\n#### {case.label} on {case.dataset}, N_high {n_high}\n\n{case.teacher_note}. Replay: "
            f"{case_options['replay_n']} frames of {' + '.join(case_options['replay_sources'])}"
            f"{''.join(f'; {note}' for note in payload.get('notes_by_case', {}).get(case.name, []))}.\n\n"
        )
        text += table(summary, case)
    costs = [c for c in (payload.get("replay") or {}).values() if c.get("labelling_seconds") is not None]
    runs = len(payload["runs"])
    text += f"\nCost: {payload['run_hours']:.1f} run-hours of training and evaluation for the {runs} runs"
    if costs:
        seconds = [c["structure_seconds"] + c["labelling_seconds"] for c in costs]
        text += (
            f"; a replay set took {min(seconds):.0f}–{max(seconds):.0f} s to make and label per case, seed and "
            f"N_high (peak process memory {max(c['peak_rss_mib'] for c in costs):.0f} MiB), once: it is cached and "
            "shared by the methods"
        )
    text += ".\n"
    rows = verdict_rows(payload)
    if rows:
        text += (
            "\nThe targets of issue 29 (in-domain within 5 % of the best method; out of domain no worse than the "
            "fine-tuning compared; forgetting at most 20 % of its), means over seeds:\n\n"
            "| case | N_high | MF | fine-tuning compared | in-domain | out of domain | forgetting |\n"
            "| --- | --- | --- | --- | --- | --- | --- |\n"
            + "\n".join(
                f"| {case.label} on {case.dataset} | {n_high} | {METHODS[m].label} | {METHODS[r].label} | "
                + " | ".join(v.split(": ", 1)[1] for v in found)
                + " |"
                for case, n_high, m, r, found in rows
            )
            + "\n"
        )
    return text


HEADLINE_MF = ("mf_ecmr_prototypes_2to1", "mf_ecmr_prototypes", "mf_real_low_prototypes")  # fixed, not by test


def headline(payload: dict[str, Any]) -> list[str]:
    """One line per case and N_high: the trained method lowest in-domain (forces, or energy where the test
    frames have no forces), and each MF of :data:`HEADLINE_MF` present against fine-tuning with the refit:
    in-domain, other chemistries (forces) and forgetting (forces)."""
    lines = []
    for case, n_high, summary in _groups(payload):
        trained = {m: e for m, e in summary.items() if METHODS[m].build is not None}
        if not trained:
            continue
        target = "forces" if any("forces" in e.get("in_domain", {}) for e in trained.values()) else "energy"
        values = {m: _mean(summary, m, "in_domain", target) for m in trained}
        values = {m: v for m, v in values.items() if v is not None}
        best = min(values, key=values.get)
        parts = [f"lowest in-domain {target}: {summary[best]['label']} ({values[best]:.3g})"]
        reference = "finetune_refit"
        for method in HEADLINE_MF:
            if method in summary and reference in summary:
                figures = [
                    f"{_mean(summary, m, name, t):.3g}"
                    for name, t in (("in_domain", target), ("out_of_domain", "forces"), ("forgetting", "forces"))
                    for m in (method, reference)
                ]
                parts.append(
                    f"{summary[method]['label']} against {summary[reference]['label']}: in-domain {figures[0]} vs "
                    f"{figures[1]}, other chemistries {figures[2]} vs {figures[3]}, forgetting {figures[4]} vs "
                    f"{figures[5]}"
                )
        lines.append(f"- {case.label} on {case.dataset}, N_high {n_high}: " + "; ".join(parts) + ".")
    return lines


def plot(payload: dict[str, Any], path: str | Path) -> None:
    """``foundation.png``: per case, in-domain (forces, or energy where the test frames have no forces; log
    scale), other chemistries' forces and forgetting (forces; the methods that train) against N_high, one
    line per method (mean ± std), each method one colour throughout, one legend below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [name for name in CASES if payload["summary"].get(name)]
    colours = plt.get_cmap("tab20")
    style = {m: (colours(i % 20), "os^Dv<>ph*"[i % 10]) for i, m in enumerate(METHODS)}
    fig, axes = plt.subplots(len(cases), 3, figsize=(13, 3.4 * len(cases) + 1.2), squeeze=False)
    shown: dict[str, Any] = {}
    for row, name in zip(axes, cases):
        groups = {int(n): s for n, s in payload["summary"][name].items()}
        has_forces = any("forces" in e.get("in_domain", {}) for s in groups.values() for e in s.values())
        panels = (
            ("in_domain", "forces" if has_forces else "energy"),
            ("out_of_domain", "forces"),
            ("forgetting", "forces"),
        )
        for ax, (measure_name, target) in zip(row, panels):
            for method in METHODS:
                if measure_name == "forgetting" and METHODS[method].build is None:
                    continue  # the foundation model itself: nothing forgotten
                points = [
                    (n, s[method][measure_name][target])
                    for n, s in sorted(groups.items())
                    if method in s and target in s[method].get(measure_name, {})
                ]
                if not points:
                    continue
                colour, marker = style[method]
                shown[method] = ax.errorbar(
                    [n for n, _ in points],
                    [v["mean"] for _, v in points],
                    yerr=[v["std"] for _, v in points],
                    color=colour,
                    marker=marker,
                    capsize=3,
                )
            unit = "meV/atom" if target == "energy" else "meV/Å"
            title = {"in_domain": "in domain", "out_of_domain": "other chemistries", "forgetting": "forgetting"}
            ax.set_title(f"{CASES[name].label} on {CASES[name].dataset}: {title[measure_name]}", fontsize=9)
            ax.set_xlabel("N_high")
            ax.set_ylabel(f"{target} MAE ({unit})")
            if measure_name == "in_domain":
                ax.set_yscale("log")
    fig.legend(
        list(shown.values()), [METHODS[m].label for m in shown], loc="lower center", ncol=3, fontsize=7, frameon=False
    )
    fig.tight_layout(rect=(0, 0.9 / (3.4 * len(cases) + 1.2) + 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
