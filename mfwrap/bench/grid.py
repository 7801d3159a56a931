"""The benchmark suite's experiments: what each one runs, at each level.

A :class:`RunSpec` is one training run: (experiment, method, mechanisms, N_high, N_low, protocol,
seed) on one dataset with one backbone. Each experiment is a function ``level -> [RunSpec]``
(:data:`EXPERIMENTS`); a :class:`Level` holds what a level changes (data size, epochs, grids).

Protocols (every result records its own; tables never mix them silently):

* ``paper``: every model the same epochs (seed paper Table 1: batch 4, lr 0.005 cosine, Huber
  1 : 1 : 0.1 : 0.1). Multi-fidelity then takes (N_high + N_low) / N_high times the steps.
* ``equal_compute``: every model the optimiser steps that multi-fidelity takes in ``epochs``
  epochs over N_high + N_low frames (the final stage of transfer / Δ; their pre-training on the
  low fidelity is extra and said so). Multi-fidelity itself is then its ``paper`` run, which is
  not repeated.
* ``converged``: every model trains until its high-fidelity validation error stops improving, under
  the same *ceiling* of optimiser steps (what multi-fidelity takes in ``max_epochs`` epochs). The
  learning rate starts at the paper's and is cut by 0.3 after ``plateau_patience`` multi-fidelity
  epochs' worth of steps without a better validation error (TrainConfig ``scheduler: plateau``;
  validation after every own epoch); training stops after ``patience`` such epochs' worth, so a
  stopped model has trained at ≤ 0.09 × the initial rate; the best-on-validation checkpoint is
  tested and the steps it needed are reported. Counted in steps, not epochs, so that a model with
  few training frames (short epochs) is neither cut short nor stopped by noise. At medium level
  only the N_high in ``Level.converged_high`` run it.

The methods are those of :mod:`mfwrap.bench.methods`, the backbones those of
:mod:`mfwrap.bench.backbones` (their constructor arguments per level are there).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

from mfwrap.bench.methods import METHODS

PROTOCOLS = ("paper", "equal_compute", "converged")
ALL = None  # every frame of a split
MF_OPTIONS = tuple(name for name, method in METHODS.items() if method.mf_option)  # the mf_options experiment's

# Ablations of seed paper Fig. 4: N none, F all four, one mechanism alone, all but one (the bar).
ABLATIONS = {
    "N": "",
    "F": "ECMR",
    "C": "C",
    "E": "E",
    "M": "M",
    "R": "R",
    "C̄": "EMR",
    "Ē": "CMR",
    "M̄": "ECR",
    "R̄": "ECM",
}


@dataclass(frozen=True)
class RunSpec:
    """One training run of the suite (see the module docstring)."""

    experiment: str
    method: str
    n_high: int | None
    n_low: int | None
    protocol: str
    seed: int
    mechanisms: str = "ECMR"
    dataset: str = "lmfp"
    backbone: str = "chgnet"  # a name of mfwrap.bench.backbones.BACKBONES to run it (other scripts use their own)
    region: str | None = None  # coverage: where the high-fidelity training frames come from

    def __post_init__(self) -> None:
        for what, value, known in (("method", self.method, METHODS), ("protocol", self.protocol, PROTOCOLS)):
            if value not in known:
                raise ValueError(f"unknown {what} {value!r} in a run spec; known are {list(known)}")

    @property
    def name(self) -> str:
        """Directory name, unique within an experiment."""
        size = lambda n: "all" if n is None else str(n)  # noqa: E731
        method = self.method + (f"-{self.mechanisms or 'none'}" if self.method == "multi_fidelity" else "")
        region = f"_{self.region}" if self.region else ""
        return (
            f"{self.dataset}_{self.backbone}_{method}_nh{size(self.n_high)}_nl{size(self.n_low)}{region}"
            f"_{self.protocol}_s{self.seed}"
        )

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Level:
    """What a level changes (the backbones' constructor arguments per level: :mod:`mfwrap.bench.backbones`)."""

    name: str
    lmfp_size: str
    n_high: tuple[int | None, ...]
    n_low: tuple[int | None, ...]
    low_size_high: tuple[int | None, ...]
    ablation_high: int | None
    li3ps4_high: tuple[int | None, ...]
    epochs: int
    max_epochs: int
    patience: int
    n_val: int
    protocols: tuple[str, ...]
    n_low_all: int | None = None  # what "all low-fidelity frames" means at this level (None: every one)
    compile: bool = False  # compiled training steps where the backbone has a compiled path
    converged_high: tuple[int | None, ...] = ()  # learning-curve N_high that also run the converged protocol
    plateau_patience: int = 2  # converged: MF epochs without a better validation error before the lr is cut


LEVELS = {
    # A test of the pipeline (files, shapes, bookkeeping), not of accuracy.
    "quick": Level(
        "quick",
        "small",
        n_high=(10, 25),
        n_low=(20, ALL),
        low_size_high=(10,),
        ablation_high=10,
        li3ps4_high=(10,),
        epochs=1,
        max_epochs=2,
        patience=1,
        n_val=5,
        protocols=("paper",),
        n_low_all=40,
    ),
    # The paper's CHGNet on the shipped LMFP set (100 high + 300 low training frames, 50 test) on a
    # 2-core CPU: N_high <= 90 (10 held out for validation), 10 epochs instead of 60.
    "medium": Level(
        "medium",
        "small",
        n_high=(25, 50, 90),
        n_low=(0, 100, 200, ALL),
        low_size_high=(25, 90),
        ablation_high=50,
        li3ps4_high=(5, 10, 20, 40, 80),
        epochs=10,
        max_epochs=40,
        patience=5,
        n_val=10,
        protocols=("paper", "equal_compute"),
        compile=True,
        converged_high=(25, 90),
    ),
    # The paper's settings on the full LMFP set; for a GPU.
    "full": Level(
        "full",
        "full",
        n_high=(25, 50, 100, 200, 400, 800, ALL),
        n_low=(0, 200, 500, 1000, ALL),
        low_size_high=(50, 400),
        ablation_high=100,
        li3ps4_high=(5, 10, 20, 40, 80),
        epochs=60,
        max_epochs=200,
        patience=15,
        plateau_patience=5,
        n_val=100,
        protocols=PROTOCOLS,
        compile=True,
    ),
}


def _unique(specs: list[RunSpec]) -> list[RunSpec]:
    """Drop multi-fidelity under equal_compute: it is the paper run (the steps the others get)."""
    return [s for s in specs if not (METHODS[s.method].multi_fidelity and s.protocol == "equal_compute")]


def learning_curve(level: Level, seeds, backbone="chgnet") -> list[RunSpec]:
    """Fig. 2: MF (ECMR) vs single-fidelity over N_high, all low-fidelity frames."""
    runs = [
        RunSpec("learning_curve", method, n, ALL, protocol, seed, backbone=backbone)
        for protocol in level.protocols
        for n in level.n_high
        for seed in seeds
        for method in ("multi_fidelity", "single_fidelity")
    ]
    if "converged" not in level.protocols:
        runs += [
            RunSpec("learning_curve", method, n, ALL, "converged", seed, backbone=backbone)
            for n in level.converged_high
            for seed in seeds
            for method in ("multi_fidelity", "single_fidelity")
        ]
    return _unique(runs)


def low_fidelity_size(level: Level, seeds, backbone="chgnet") -> list[RunSpec]:
    """Fig. 3: MF error against the number of low-fidelity frames, at two N_high."""
    return [
        RunSpec("low_fidelity_size", "multi_fidelity", n, n_low, "paper", seed, backbone=backbone)
        for n in level.low_size_high
        for n_low in level.n_low
        for seed in seeds
    ]


def ablations(level: Level, seeds, backbone="chgnet", experiment="ablations") -> list[RunSpec]:
    """Fig. 4: each mechanism alone and all but one, at one N_high; and F with a shared readout plus
    per-fidelity residuals in place of R's independent copies (``mf_residual_readout``)."""
    n = level.ablation_high
    return [
        RunSpec(experiment, "multi_fidelity", n, ALL, "paper", seed, mechanisms=m, backbone=backbone)
        for m in ABLATIONS.values()
        for seed in seeds
    ] + [RunSpec(experiment, "mf_residual_readout", n, ALL, "paper", seed, backbone=backbone) for seed in seeds]


def transfer_delta(level: Level, seeds, backbone="chgnet") -> list[RunSpec]:
    """Fig. 5: MF against transfer learning and Δ-learning on a low-fidelity model's predictions, and
    MF warm-started from the low-fidelity model (``mf_warm_start``)."""
    return _unique(
        [
            RunSpec("transfer_delta", method, n, ALL, protocol, seed, backbone=backbone)
            for protocol in level.protocols
            for n in level.n_high
            for seed in seeds
            for method in ("multi_fidelity", "mf_warm_start", "single_fidelity", "transfer", "delta_model")
        ]
    )


def mf_options(level: Level, seeds, backbone="chgnet") -> list[RunSpec]:
    """MF with each trainer option aimed at the scarce fidelity (:data:`MF_OPTIONS`, the methods marked
    ``mf_option``), each at MF's own compute (paper protocol; warm start's pre-training extra), at the
    smallest and largest N_high; among them MF with its fidelity parameters drawn at random
    (``mf_random_init``), to measure what the identity start is worth."""
    return [
        RunSpec("mf_options", method, n, ALL, "paper", seed, backbone=backbone)
        for n in dict.fromkeys((level.n_high[0], level.n_high[-1]))
        for seed in seeds
        for method in MF_OPTIONS
    ]


def coverage(level: Level, seeds, backbone="chgnet") -> list[RunSpec]:
    """Every high-fidelity training frame with Mn fraction <= 0.5 (validation frames from there too),
    low-fidelity frames everywhere; tested on the high-fidelity test frames with Mn fraction > 0.5
    (SevenNet-MF's argument). MF, single-fidelity and transfer under the paper protocol, and
    single-fidelity at MF's steps where the level has the equal-compute protocol."""
    protocols = {
        "multi_fidelity": ("paper",),
        "transfer": ("paper",),
        "single_fidelity": ("paper",) + (("equal_compute",) if "equal_compute" in level.protocols else ()),
    }
    return [
        RunSpec("coverage", method, ALL, ALL, protocol, seed, region="mn_le_half", backbone=backbone)
        for seed in seeds
        for method, chosen in protocols.items()
        for protocol in chosen
    ]


def li3ps4(level: Level, seeds, backbone="chgnet") -> list[RunSpec]:
    """Real DFT: PBEsol (energy, forces) low, r2SCAN (energy only) high; paired structures. Every
    method, and MF with each trainer option of ``mf_options``."""
    return _unique(
        [
            RunSpec("li3ps4", method, n, ALL, protocol, seed, dataset="li3ps4", backbone=backbone)
            for protocol in level.protocols
            for n in level.li3ps4_high
            for seed in seeds
            for method in (
                "multi_fidelity",
                "mf_warm_start",
                "mf_balanced",
                "mf_reweighted",
                "single_fidelity",
                "transfer",
                "delta_model",
                "delta_labels",
            )
        ]
    )


def second_backbone(level: Level, seeds, backbone="schnet") -> list[RunSpec]:
    """Experiments 1 (three N_high; paper and, where the level has it, equal compute) and 3 with PyG
    SchNet through the wrapper."""
    curve = [
        RunSpec("second_backbone", method, n, ALL, protocol, seed, backbone=backbone)
        for protocol in level.protocols
        if protocol != "converged"
        for n in level.n_high[-3:]
        for seed in seeds
        for method in ("multi_fidelity", "single_fidelity")
    ]
    return list(dict.fromkeys(_unique(curve) + ablations(level, seeds, backbone, experiment="second_backbone")))


GAP_DATASETS = ("lmfp-gap0", "lmfp-gap50", "lmfp")  # low-fidelity labels at α = 0, 0.5, 1 (mfwrap.datasets.lmfp_gap)


def fidelity_gap(level: Level, seeds, backbone="chgnet") -> list[RunSpec]:
    """The diagnosis of MF against single-fidelity at equal compute: MF (ECMR) with the LMFP low-fidelity
    labels moved toward the high teacher, y_high + α (y_low − y_high) for α = 0, 0.5 and 1 (the
    shipped set), at the smallest and largest N_high; single-fidelity at MF's steps (equal compute
    where the level has it) trains on the same high-fidelity frames at every α. Only the gap changes.
    At the smallest N_high, where the fidelity-specific parameters see fewest steps, also with no gap
    (α = 0): MF without readout copies (ECM) and MF sampling the fidelities 1:1 (and 1:1 at α = 1),
    to tell what the gap costs from what the share of the steps costs."""
    sf_protocol = "equal_compute" if "equal_compute" in level.protocols else "paper"
    smallest = level.n_high[0]
    specs = [
        spec
        for n in dict.fromkeys((smallest, level.n_high[-1]))
        for seed in seeds
        for spec in [
            RunSpec("fidelity_gap", "multi_fidelity", n, ALL, "paper", seed, dataset=d, backbone=backbone)
            for d in GAP_DATASETS
        ]
        + [RunSpec("fidelity_gap", "single_fidelity", n, ALL, sf_protocol, seed, backbone=backbone)]
    ]
    return specs + [
        spec
        for seed in seeds
        for spec in (
            RunSpec(
                "fidelity_gap",
                "multi_fidelity",
                smallest,
                ALL,
                "paper",
                seed,
                mechanisms="ECM",
                dataset="lmfp-gap0",
                backbone=backbone,
            ),
            RunSpec(
                "fidelity_gap", "mf_balanced", smallest, ALL, "paper", seed, dataset="lmfp-gap0", backbone=backbone
            ),
            RunSpec("fidelity_gap", "mf_balanced", smallest, ALL, "paper", seed, dataset="lmfp", backbone=backbone),
        )
    ]


EXPERIMENTS: dict[str, Callable[..., list[RunSpec]]] = {
    "learning_curve": learning_curve,
    "low_fidelity_size": low_fidelity_size,
    "ablations": ablations,
    "transfer_delta": transfer_delta,
    "mf_options": mf_options,
    "coverage": coverage,
    "li3ps4": li3ps4,
    "second_backbone": second_backbone,
    "fidelity_gap": fidelity_gap,
}


def in_own_epochs(mf_epochs: int, n_mf_train: int, n_own_train: int, batch_size: int) -> int:
    """``mf_epochs`` multi-fidelity epochs' worth of optimiser steps, in epochs of a run with
    ``n_own_train`` training frames (at least 1)."""
    return max(1, round(mf_epochs * math.ceil(n_mf_train / batch_size) / math.ceil(n_own_train / batch_size)))


def epochs_for(spec: RunSpec, level: Level, n_mf_train: int, n_own_train: int, batch_size: int) -> int:
    """Epochs of the run's final training stage under its protocol (module docstring)."""
    if spec.protocol == "paper":
        return level.epochs
    mf_epochs = level.max_epochs if spec.protocol == "converged" else level.epochs
    return in_own_epochs(mf_epochs, n_mf_train, n_own_train, batch_size)


def convergence_options(spec: RunSpec, level: Level, n_mf_train: int, n_own_train: int, batch_size: int) -> dict:
    """TrainConfig options of the ``converged`` protocol ({} under the others): the "plateau"
    learning-rate schedule and early stopping, with ``level.plateau_patience`` and
    ``level.patience`` multi-fidelity epochs' worth of steps expressed in the run's own epochs."""
    if spec.protocol != "converged":
        return {}
    own_epochs = lambda mf_epochs: in_own_epochs(mf_epochs, n_mf_train, n_own_train, batch_size)  # noqa: E731
    return {
        "scheduler": "plateau",
        "plateau_patience": own_epochs(level.plateau_patience),
        "patience": own_epochs(level.patience),
    }
