"""Training data from a config: labelled structure files, or the LMFP dataset, as graph lists.

YAML (the ``data`` section of a run config)::

    data:
      fidelities: [low, high]          # fidelity index = position; the last is the target
      train:
        - {path: low.xyz, fidelity: low}
        - {path: high.xyz, fidelity: high, limit: 100}
      val:  [{path: high_val.xyz, fidelity: high}]
      test: [{path: high_test.xyz, fidelity: high}]

or, for the built-in two-fidelity LMFP set (:mod:`mfwrap.datasets.lmfp`)::

    data:
      lmfp: {size: small, seed: 0, n_high: 100, n_val: 0}

Files are anything ``ase.io.read`` reads (extxyz, ASE db, ...). Labels are taken from the
attached calculator's results or from ``atoms.info`` / ``atoms.arrays`` under the keys of the
source (``energy_key`` ...; None = the label is absent), in ASE units: energy eV (total),
forces eV/Å, stress eV/Å^3 (3×3 or Voigt 6; converted to GPa), magmoms μB.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import ase.io
import numpy as np
from ase import Atoms, units
from ase.stress import voigt_6_to_full_3x3_stress
from torch_geometric.data import Data

from mfwrap.data import keys as K
from mfwrap.data.graph import GraphSpec, to_graph


@dataclass
class Source:
    """One labelled file at one fidelity.

    Attributes:
        path: file read by ``ase.io.read(path, index)``.
        fidelity: name of the fidelity of every structure in it.
        index: ase's selection, ":" = all.
        limit: keep only the first ``limit`` structures (after ``index``).
        energy_key, forces_key, stress_key, magmoms_key: where the labels are (calculator
            result, ``info`` or ``arrays`` entry); None = not labelled.
    """

    path: str
    fidelity: str
    index: str = ":"
    limit: int | None = None
    energy_key: str | None = "energy"
    forces_key: str | None = "forces"
    stress_key: str | None = "stress"
    magmoms_key: str | None = "magmoms"


def _lookup(atoms: Atoms, key: str | None) -> Any:
    if key is None:
        return None
    results = atoms.calc.results if atoms.calc is not None else {}
    for store in (results, atoms.info, atoms.arrays):
        if key in store:
            return store[key]
    return None


def atoms_labels(atoms: Atoms, source: Source) -> dict[str, Any]:
    """Labels of ``atoms`` in mfwrap units (stress converted from eV/Å^3 to GPa)."""
    stress = _lookup(atoms, source.stress_key)
    if stress is not None:
        stress = np.asarray(stress, dtype=np.float64)
        stress = (voigt_6_to_full_3x3_stress(stress) if stress.shape == (6,) else stress.reshape(3, 3)) / units.GPa
    return {K.ENERGY: _lookup(atoms, source.energy_key), K.FORCES: _lookup(atoms, source.forces_key),
            K.STRESS: stress, K.MAGMOMS: _lookup(atoms, source.magmoms_key)}


def atoms_to_graphs(frames: Sequence[Atoms], source: Source, fidelity_index: int, spec: GraphSpec) -> list[Data]:
    """Labelled graphs of ``frames`` at one fidelity; errors name the file and frame."""
    return [
        to_graph(atoms, spec, fidelity=fidelity_index, labels=atoms_labels(atoms, source), name=f"{source.path}[{i}]")
        for i, atoms in enumerate(frames)
    ]


@dataclass
class DataConfig:
    """The ``data`` section: fidelity names and the train / val / test sources (or ``lmfp``)."""

    fidelities: list[str] = field(default_factory=list)
    train: list[Source] = field(default_factory=list)
    val: list[Source] = field(default_factory=list)
    test: list[Source] = field(default_factory=list)
    lmfp: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        for split in ("train", "val", "test"):
            setattr(self, split, [s if isinstance(s, Source) else Source(**s) for s in getattr(self, split)])
        if self.lmfp is not None:
            self.fidelities = self.fidelities or ["low", "high"]
        elif not self.train:
            raise ValueError("data: give training sources (data.train) or the LMFP dataset (data.lmfp)")
        used = {s.fidelity for split in (self.train, self.val, self.test) for s in split}
        self.fidelities = self.fidelities or sorted(used)
        unknown = used - set(self.fidelities)
        if unknown:
            raise ValueError(f"data: sources name fidelities {sorted(unknown)} not in fidelities {self.fidelities}")


def load_data(config: DataConfig, spec: GraphSpec) -> tuple[list[Data], list[Data] | None, list[Data] | None]:
    """(train, val or None, test or None) graphs built with the backbone's ``spec``."""
    if config.lmfp is not None:
        return lmfp_graphs(spec, fidelities=config.fidelities, **config.lmfp)
    splits = []
    for sources in (config.train, config.val, config.test):
        graphs: list[Data] = []
        for source in sources:
            frames = ase.io.read(source.path, index=source.index)
            frames = [frames] if isinstance(frames, Atoms) else list(frames)
            graphs += atoms_to_graphs(frames[: source.limit], source, config.fidelities.index(source.fidelity), spec)
        splits.append(graphs)
    return splits[0], splits[1] or None, splits[2] or None


def lmfp_graphs(spec: GraphSpec, *, fidelities: Sequence[str] = ("low", "high"), size: str = "small", seed: int = 0,
                n_high: int | None = None, n_low: int | None = None, n_val: int = 0,
                cache_dir: str | None = None) -> tuple[list[Data], list[Data] | None, list[Data]]:
    """LMFP splits as graphs: train = ``n_low`` low + ``n_high`` high frames, val = the next
    ``n_val`` high-fidelity training frames, test = the held-out high-fidelity frames.

    ``n_high`` / ``n_low`` None = all; frames are taken in the dataset's (already shuffled) order.
    """
    from mfwrap.datasets.lmfp import load_lmfp

    splits = load_lmfp(size, seed, cache_dir)
    low, high = list(fidelities).index("low"), list(fidelities).index("high")
    sources = {name: Source(path=f"lmfp-{size}/{name}", fidelity=name.split("_")[0]) for name in splits}
    n_high = len(splits["high_train"]) - n_val if n_high is None else n_high
    if n_high + n_val > len(splits["high_train"]):
        raise ValueError(f"LMFP {size}: {n_high} + {n_val} high-fidelity frames requested, {len(splits['high_train'])} exist")
    train = atoms_to_graphs(splits["low_train"][:n_low], sources["low_train"], low, spec)
    train += atoms_to_graphs(splits["high_train"][:n_high], sources["high_train"], high, spec)
    val = atoms_to_graphs(splits["high_train"][n_high : n_high + n_val], sources["high_train"], high, spec)
    test = atoms_to_graphs(splits["high_test"], sources["high_test"], high, spec)
    return train, val or None, test
