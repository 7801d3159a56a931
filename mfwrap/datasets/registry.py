"""The datasets mfwrap knows by name, and the one rule that splits a dataset for a run.

:data:`DATASETS` maps a name to a :class:`Dataset`: its fidelity names (low first, the target
last), the targets its target fidelity labels, how its labelled frames are loaded (as
:class:`Pools`) and which regions a run may restrict itself to. ``mfwrap train`` reads one from
a config (``data: {<name>: {<Split options>}}``), the benchmark suite splits its runs' data with
it (``RunSpec.dataset``), and so does ``make demo``.

The split rule (:meth:`Dataset.split`, with :class:`Split` options; ``seed`` picks everything):

1. ``rng = numpy.random.default_rng(seed)``; the high-fidelity training pool is put in the
   order ``rng.permutation``; the low-fidelity pool follows the same permutation where the
   dataset pairs its frames (``low[i]`` is the structure of ``high[i]``: Li3PS4), else it is put
   in the order of the next ``rng.permutation``.
2. A ``region`` keeps the high-fidelity training frames inside it and the test frames outside it
   (the low-fidelity frames are all kept).
3. Validation: the dataset's own validation frames where it ships them, else the first ``n_val``
   high-fidelity frames of that order; training: the next ``n_high`` high-fidelity frames and the
   first ``n_low`` low-fidelity ones (None: all); test: the dataset's held-out frames.

Adding a dataset is one entry in :data:`DATASETS`: a loader returning :class:`Pools`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mfwrap.data.readers import LabelledStructure, read_fidelities

Records = list[LabelledStructure]
LI3PS4_DIR = Path(__file__).resolve().parent / "li3ps4"


@dataclass(frozen=True)
class Pools:
    """A dataset's labelled frames before a run's split.

    Attributes:
        high: the high-fidelity (target) training pool.
        low: the low-fidelity training pool.
        test: the held-out high-fidelity test frames.
        val: the dataset's own high-fidelity validation frames (those of a dataset that ships
            them, ``Dataset.ships_validation``); None = drawn from ``high``.
    """

    high: Records
    low: Records
    test: Records
    val: Records | None = None


@dataclass(frozen=True)
class Split:
    """Which frames of a dataset a run takes (the rule is in the module docstring).

    Attributes:
        size: the variant of a dataset that has several (LMFP: small, full); None = its default.
        seed: seeds the order of the training pools (the validation and training frames drawn).
        n_high: high-fidelity training frames; None = all the pool has after validation.
        n_low: low-fidelity training frames; None = all.
        n_val: high-fidelity validation frames taken from the training pool (datasets that ship
            none; None = 0, and training holds out ``train.val_fraction`` instead).
        region: keep high-fidelity training frames in this region and test frames outside it
            (LMFP: mn_le_half, Mn / (Mn + Fe) <= 0.5); None = everywhere.
        cache_dir: where built datasets are cached; None = ``$MFWRAP_CACHE`` or ``~/.cache/mfwrap``.
    """

    size: str | None = None
    seed: int = 0
    n_high: int | None = None
    n_low: int | None = None
    n_val: int | None = None
    region: str | None = None
    cache_dir: str | None = None


@dataclass
class Splits:
    """Labelled records of one run: training (both fidelities), validation and test (high)."""

    train_high: Records
    train_low: Records
    val: Records
    test: Records


def _take(records: Records, count: int | None, what: str) -> Records:
    if count is not None and count > len(records):
        raise ValueError(f"{count} {what} frames requested, {len(records)} exist")
    return records if count is None else records[:count]


@dataclass(frozen=True)
class Dataset:
    """A named dataset (module docstring).

    Attributes:
        name: its key in :data:`DATASETS`.
        fidelities: fidelity names, low first, the target (high) fidelity last.
        targets: the targets it labels (at some fidelity), a subset of "efsm": what a run trains.
        load: ``(size, cache_dir) -> Pools``; ``size`` is one of ``sizes`` or None (datasets with one).
        sizes: the variants ``Split.size`` picks, the default first; () = a dataset with one.
        paired: ``low[i]`` is the structure of ``high[i]``; the split keeps them paired.
        ships_validation: it has its own validation frames (``Pools.val``); ``Split.n_val`` does not apply.
        regions: {name: predicate of a frame being inside}, for ``Split.region``.
        variant_of: the dataset it is a variant of; None = none.
    """

    name: str
    fidelities: tuple[str, ...]
    targets: str
    load: Callable[[str | None, str | None], Pools]
    sizes: tuple[str, ...] = ()
    paired: bool = False
    ships_validation: bool = False
    regions: Mapping[str, Callable[[LabelledStructure], bool]] = field(default_factory=dict)
    variant_of: str | None = None

    @property
    def family(self) -> str:
        """The dataset it is a variant of, else its own name ("lmfp-gap50" → "lmfp")."""
        return self.variant_of or self.name

    def split(self, options: Split | None = None) -> Splits:
        """The run's frames under ``options`` (the rule is in the module docstring)."""
        options = options or Split()
        if options.size is not None and options.size not in self.sizes:
            known = f"one of {list(self.sizes)}" if self.sizes else "none: it has one size"
            raise ValueError(f"dataset {self.name!r} has no size {options.size!r}; sizes: {known}")
        if options.region is not None and options.region not in self.regions:
            raise ValueError(f"dataset {self.name!r} has no region {options.region!r}; regions: {list(self.regions)}")
        if self.ships_validation and options.n_val is not None:
            raise ValueError(f"dataset {self.name!r} ships its validation frames; leave n_val out")
        pools = self.load(options.size or (self.sizes[0] if self.sizes else None), options.cache_dir)
        rng = np.random.default_rng(options.seed)
        order = rng.permutation(len(pools.high))
        high = [pools.high[i] for i in order]
        low = [pools.low[i] for i in (order if self.paired else rng.permutation(len(pools.low)))]
        test = pools.test
        if options.region is not None:
            inside = self.regions[options.region]
            high, test = [r for r in high if inside(r)], [r for r in test if not inside(r)]
        n_val = 0 if self.ships_validation else options.n_val or 0
        val = pools.val if self.ships_validation else _take(high, n_val, "high-fidelity validation")
        train_high = _take(high[n_val:], options.n_high, "high-fidelity training")
        return Splits(train_high, _take(low, options.n_low, "low-fidelity training"), val, test)


def mn_fraction(record: LabelledStructure) -> float:
    """Mn / (Mn + Fe) of a frame's atoms (0 without either)."""
    numbers = record.atoms.numbers
    mn, fe = int((numbers == 25).sum()), int((numbers == 26).sum())
    return mn / max(mn + fe, 1)


def _lmfp(size: str | None, cache_dir: str | os.PathLike | None, gap: float | None = None) -> Pools:
    from mfwrap.datasets.lmfp import load_lmfp
    from mfwrap.datasets.lmfp_gap import load_lmfp_gap

    data = load_lmfp(size, 0, cache_dir) if gap is None else load_lmfp_gap(gap, size, 0, cache_dir)
    return Pools(high=data["high_train"], low=data["low_train"], test=data["high_test"])


# Li3PS4's extxyz keys: {fidelity: {target: key}}
LI3PS4_KEYS = {"pbesol": {"energy": "energy", "forces": "forces"}, "r2scan": {"energy": "mtt::r2scan_energy"}}


def li3ps4_records(part: str, fidelity: str) -> Records:
    """The Li3PS4 frames of ``part`` (train, val, test) at ``fidelity`` (pbesol, r2scan)."""
    return [r for r in read_fidelities(LI3PS4_DIR / f"{part}.xyz", LI3PS4_KEYS) if r.fidelity == fidelity]


def _li3ps4(size: str | None, cache_dir: str | os.PathLike | None) -> Pools:
    def high_only(name: str) -> Records:
        return li3ps4_records(name.removesuffix(".xyz"), "r2scan")

    train = read_fidelities(LI3PS4_DIR / "train.xyz", LI3PS4_KEYS)  # each frame at both fidelities, read once
    return Pools(
        high=[r for r in train if r.fidelity == "r2scan"],
        low=[r for r in train if r.fidelity == "pbesol"],
        test=high_only("test.xyz"),
        val=high_only("val.xyz"),
    )


def _lmfp_entry(gap: float | None) -> Dataset:
    from mfwrap.datasets.lmfp_frames import SIZES

    name = "lmfp" if gap is None else f"lmfp-gap{round(100 * gap)}"
    return Dataset(
        name,
        ("low", "high"),
        "efsm",
        functools.partial(_lmfp, gap=gap),
        sizes=("small", *sorted(s for s in SIZES if s != "small")),
        regions={"mn_le_half": lambda record: mn_fraction(record) <= 0.5},
        variant_of=None if gap is None else "lmfp",
    )


DATASETS: dict[str, Dataset] = {
    # LiMnFePO4 labelled by CHGNet 0.3.0 (low: energy, forces, stress) and CHGNet r2SCAN (high: and magmoms)
    "lmfp": _lmfp_entry(None),
    # the same with the low-fidelity labels moved toward the high teacher, at gap α = 0, 0.1, ..., 0.9
    **{entry.name: entry for entry in (_lmfp_entry(percent / 100) for percent in range(0, 100, 10))},
    # Li3PS4 DFT: PBEsol (energy, forces) and r2SCAN (energy) of the same 100 structures, 80 / 10 / 10
    "li3ps4": Dataset("li3ps4", ("pbesol", "r2scan"), "ef", _li3ps4, paired=True, ships_validation=True),
}


def get_dataset(name: str) -> Dataset:
    """``DATASETS[name]``; an unknown name is a ValueError listing the known ones."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known are {sorted(DATASETS)}")
    return DATASETS[name]
