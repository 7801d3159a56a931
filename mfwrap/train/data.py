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

Files are read by :mod:`mfwrap.data.readers` (extxyz, ASE db, anything ``ase.io`` reads; labels in
ASE units, looked up under the source's ``keys``), e.g. energies stored under another name::

        - {path: train.xyz, fidelity: r2scan, keys: {energy: "mtt::r2scan_energy"}}

A malformed frame or a NaN label is an error naming the file and frame; a label that only some
frames of a source have is masked where absent, and the log says in how many frames; a source
that yields no labelled frame is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from torch_geometric.data import Data

from mfwrap.data.graph import GraphSpec
from mfwrap.data.readers import read_dataset, to_graphs


@dataclass
class Source:
    """One labelled file at one fidelity.

    Attributes:
        path: extxyz, ASE db or any file ``ase.io.read`` reads.
        fidelity: name of the fidelity of every structure in it.
        keys: {target: name in the file} (see :mod:`mfwrap.data.readers`); a target left out
            (or null) is unlabelled. None: the standard ASE names, each used where present.
        limit: read only the first ``limit`` (≥ 1) structures.
    """

    path: str
    fidelity: str
    keys: dict[str, str | None] | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise ValueError(f"data source {self.path}: limit must be a positive integer, got {self.limit!r}")

    def read(self, fidelities: Sequence[str], spec: GraphSpec) -> list[Data]:
        records = read_dataset(self.path, self.fidelity, self.keys, index=slice(None, self.limit))
        if not records:
            raise ValueError(f"data source {self.path}: no frame with a label at fidelity {self.fidelity!r}")
        return to_graphs(records, spec, list(fidelities))


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
    splits = [[g for source in sources for g in source.read(config.fidelities, spec)]
              for sources in (config.train, config.val, config.test)]
    return splits[0], splits[1] or None, splits[2] or None


def lmfp_graphs(spec: GraphSpec, *, fidelities: Sequence[str] = ("low", "high"), size: str = "small", seed: int = 0,
                n_high: int | None = None, n_low: int | None = None, n_val: int = 0,
                cache_dir: str | None = None) -> tuple[list[Data], list[Data] | None, list[Data]]:
    """LMFP splits as graphs: train = ``n_low`` low + ``n_high`` high frames, val = the next
    ``n_val`` high-fidelity training frames, test = the held-out high-fidelity frames.

    ``n_high`` / ``n_low`` None = all; frames are taken in the dataset's (already shuffled) order.
    """
    from mfwrap.datasets.lmfp import load_lmfp

    splits = load_lmfp(size, seed, cache_dir)  # builds the dataset on first use, checks it
    n_high = len(splits["high_train"]) - n_val if n_high is None else n_high
    if n_high + n_val > len(splits["high_train"]):
        raise ValueError(f"LMFP {size}: {n_high} + {n_val} high-fidelity frames requested, {len(splits['high_train'])} exist")
    graphs = lambda records: to_graphs(records, spec, list(fidelities))  # noqa: E731
    train = graphs(splits["low_train"][:n_low] + splits["high_train"][:n_high])
    val = graphs(splits["high_train"][n_high : n_high + n_val])
    return train, val or None, graphs(splits["high_test"])
