"""The suite's methods, one table: what each trains, with which options, and how it reads in reports.

A suite method is one of the training methods of :mod:`mfwrap.train.baselines` (``trains``) with
fixed overrides of its model config (:class:`mfwrap.train.config.ModelConfig`), its experiment
(:class:`mfwrap.train.baselines.Experiment`) and its trainer options
(:class:`mfwrap.train.config.TrainConfig`, which may depend on the run's frames). A new method is
one entry of :data:`METHODS`; the grids (:mod:`mfwrap.bench.grid`), the runner, the report and the
claims read it from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

# (low fidelity, high fidelity, N_low, N_high) -> TrainConfig options
TrainOptions = Callable[[str, str, int, int], dict[str, Any]]


def _no_options(low: str, high: str, n_low: int, n_high: int) -> dict[str, Any]:
    return {}


def _sampling_one_to_one(low: str, high: str, n_low: int, n_high: int) -> dict[str, Any]:
    """Half of every epoch's draws at the high fidelity."""
    return {"fidelity_sampling": {low: 1.0, high: 1.0}}


def _high_reweighted(low: str, high: str, n_low: int, n_high: int) -> dict[str, Any]:
    """Each fidelity's total loss weight equal: the high fidelity's entries weighted N_low / N_high."""
    return {"fidelity_loss_weights": {high: n_low / n_high}}


@dataclass(frozen=True)
class Method:
    """One method of the suite.

    Attributes:
        name: the name in run specs, run directories and results.
        label: how it reads in tables and legends.
        trains: the :mod:`mfwrap.train.baselines` method it runs: multi_fidelity, single_fidelity,
            transfer or delta.
        model: ModelConfig overrides (e.g. ``{"readout": "residual"}``).
        experiment: Experiment overrides (e.g. ``{"warm_start": True}``).
        train_options: its TrainConfig options from (low fidelity, high fidelity, N_low, N_high).
        mf_option: a multi-fidelity trainer option (or diagnosis) of the ``mf_options`` experiment.
        selectable: a multi-fidelity option at multi-fidelity's own steps, among which a trainer
            option is chosen on the validation frames (:mod:`mfwrap.bench.claims`).
        ablation_label: its label in the ablation tables, where it stands beside the mechanism
            variants (None: ``label``).
    """

    name: str
    label: str
    trains: str
    model: Mapping[str, Any] = field(default_factory=dict)
    experiment: Mapping[str, Any] = field(default_factory=dict)
    train_options: TrainOptions = _no_options
    mf_option: bool = False
    selectable: bool = False
    ablation_label: str | None = None

    @property
    def multi_fidelity(self) -> bool:
        """Trains one model on every fidelity at once, so its epochs run over N_high + N_low frames."""
        return self.trains == "multi_fidelity"

    @property
    def uses_low_fidelity(self) -> bool:
        """Sees low-fidelity frames (all but single-fidelity)."""
        return self.trains != "single_fidelity"

    @property
    def pretrains(self) -> bool:
        """Trains the plain backbone on the low fidelity first (stage one): transfer, Δ, warm start."""
        return self.trains in ("transfer", "delta") or bool(self.experiment.get("warm_start"))


def _table(*methods: Method) -> Mapping[str, Method]:
    return MappingProxyType({method.name: method for method in methods})


# In report order: multi-fidelity and its variants first.
METHODS: Mapping[str, Method] = _table(
    Method("multi_fidelity", "MF", "multi_fidelity", mf_option=True, selectable=True),
    Method("mf_warm_start", "MF, warm start", "multi_fidelity", experiment={"warm_start": True}, mf_option=True),
    Method(
        "mf_balanced",
        "MF, sampling 1:1",
        "multi_fidelity",
        train_options=_sampling_one_to_one,
        mf_option=True,
        selectable=True,
    ),
    Method(
        "mf_reweighted",
        "MF, high weighted N_low/N_high",
        "multi_fidelity",
        train_options=_high_reweighted,
        mf_option=True,
        selectable=True,
    ),
    # a diagnosis: the fidelity parameters drawn at random instead of the identity start
    Method(
        "mf_random_init",
        "MF, fidelity parameters drawn at random",
        "multi_fidelity",
        model={"fidelity_init": "random"},
        mf_option=True,
    ),
    # R as one shared readout plus a zero-started residual per fidelity instead of independent copies
    Method(
        "mf_residual_readout",
        "MF, shared readout + residuals",
        "multi_fidelity",
        model={"readout": "residual"},
        ablation_label="F, R shared + residual",
    ),
    Method("single_fidelity", "single-fidelity", "single_fidelity"),
    Method("transfer", "transfer", "transfer"),
    Method("delta_model", "Δ (model)", "delta", experiment={"delta_reference": "model"}),
    Method("delta_labels", "Δ (labels)", "delta", experiment={"delta_reference": "labels"}),
)
