"""Training data from a config: labelled structure files, or a registered dataset, as graph lists.

YAML (the ``data`` section of a run config)::

    data:
      fidelities: [low, high]          # fidelity index = position; the last is the target
      train:
        - {path: low.xyz, fidelity: low}
        - {path: high.xyz, fidelity: high, limit: 100}
      val:  [{path: high_val.xyz, fidelity: high}]
      test: [{path: high_test.xyz, fidelity: high}]

or a dataset of :data:`mfwrap.datasets.registry.DATASETS` by name, split by the registry's rule
with the options of :class:`~mfwrap.datasets.registry.Split` (the benchmark suite's splits)::

    data:
      lmfp: {size: small, seed: 0, n_high: 90, n_val: 10}
      # or: li3ps4: {seed: 1, n_high: 20}

Files are read by :mod:`mfwrap.data.readers` (extxyz, ASE db, anything ``ase.io`` reads; labels in
ASE units, looked up under the source's ``keys``), e.g. energies stored under another name::

        - {path: train.xyz, fidelity: r2scan, keys: {energy: "mtt::r2scan_energy"}}

A malformed frame or a NaN label is an error naming the file and frame; a label that only some
frames of a source have is masked where absent, and the log says in how many frames; a source
that yields no labelled frame is an error.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch_geometric.data import Data

from mfwrap.data.graph import GraphSpec
from mfwrap.data.readers import read_dataset, to_graphs
from mfwrap.datasets.registry import DATASETS, Split, get_dataset
from mfwrap.train.config import check_fields, from_mapping


@dataclass
class Source:
    """One labelled file at one fidelity.

    Attributes:
        path: extxyz, ASE db or any file ``ase.io.read`` reads; in a config file, relative to the file's folder.
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
        if not Path(self.path).exists():
            raise FileNotFoundError(
                f"data source {self.path}: no such file (in a config file, a relative path is relative to its folder)"
            )
        records = read_dataset(self.path, self.fidelity, self.keys, index=slice(None, self.limit))
        return to_graphs(records, spec, list(fidelities))  # read_dataset refuses a fidelity with no label


@dataclass
class DataConfig:
    """The ``data`` section: fidelity names and the train / val / test sources, or a registered dataset.

    Attributes:
        fidelities: fidelity names in index order, the target last; default: the dataset's, else
            the sources' in sorted order.
        train: training sources (files), unless a registered dataset is named.
        val: validation sources; none = ``train.val_fraction`` of the training frames held out.
        test: test sources (optional).
        dataset: name of a registered dataset (:data:`~mfwrap.datasets.registry.DATASETS`), in
            YAML its name as the key: ``lmfp: {n_high: 90}``.
        split: how the dataset is split (:class:`~mfwrap.datasets.registry.Split`).
    """

    fidelities: list[str] = field(default_factory=list)
    train: list[Source] = field(default_factory=list)
    val: list[Source] = field(default_factory=list)
    test: list[Source] = field(default_factory=list)
    dataset: str | None = None
    split: Split = field(default_factory=Split)

    def __post_init__(self) -> None:
        for name in ("train", "val", "test"):
            sources = [
                s if isinstance(s, Source) else from_mapping(Source, s, f"data.{name}[{i}]")
                for i, s in enumerate(getattr(self, name))
            ]
            setattr(self, name, sources)
        if isinstance(self.split, Mapping):
            self.split = from_mapping(Split, self.split, "data.split")
        if self.dataset is not None:
            names = get_dataset(self.dataset).fidelities
            if self.train or self.val or self.test:
                raise ValueError(
                    f"data: give either sources (train, val, test) or the dataset {self.dataset!r}, not both"
                )
            missing = [name for name in names if name not in self.fidelities]
            if self.fidelities and missing:
                raise ValueError(f"data: fidelities {self.fidelities} lack {missing} of the dataset {self.dataset!r}")
            self.fidelities = self.fidelities or list(names)
        elif not self.train:
            raise ValueError(
                "data: give training sources (data.train) or a registered dataset, e.g. data: {lmfp: {}}; "
                f"known datasets are {sorted(DATASETS)}"
            )
        used = {s.fidelity for split in (self.train, self.val, self.test) for s in split}
        self.fidelities = self.fidelities or sorted(used)
        unknown = used - set(self.fidelities)
        if unknown:
            raise ValueError(f"data: sources name fidelities {sorted(unknown)} not in fidelities {self.fidelities}")

    @classmethod
    def from_dict(cls, values: Any) -> "DataConfig":
        """From the YAML mapping, where a registered dataset appears as ``<name>: {<Split options>}``;
        keys and value types checked (:func:`~mfwrap.train.config.check_fields`), errors naming the key path."""
        fields = [f.name for f in dataclasses.fields(cls) if f.name not in ("dataset", "split")]
        if not isinstance(values, Mapping):
            raise ValueError(f"data: expected a mapping of {fields} or a dataset of {sorted(DATASETS)}, got {values!r}")
        named = [key for key in values if key in DATASETS]
        unknown = [key for key in values if key not in fields and key not in DATASETS]
        if unknown:
            raise ValueError(
                f"data: unknown key(s) {unknown}; known are {sorted(fields)} or a dataset of {sorted(DATASETS)}"
            )
        if len(named) > 1:
            raise ValueError(f"data: one dataset at a time, got {named}")
        kept = check_fields(cls, {key: value for key, value in values.items() if key in fields}, "data")
        if named:
            kept.update(dataset=named[0], split=from_mapping(Split, values[named[0]] or {}, f"data.{named[0]}"))
        return cls(**kept)

    def relative_to(self, folder: str | Path) -> "DataConfig":
        """This config with every relative path (sources, the dataset's ``cache_dir``; ``~`` expanded)
        taken relative to ``folder``: a config file's paths are relative to the file's folder."""

        def resolve(path: str) -> str:
            return str(Path(folder) / Path(path).expanduser())

        sources = {
            name: [dataclasses.replace(s, path=resolve(s.path)) for s in getattr(self, name)]
            for name in ("train", "val", "test")
        }
        cache = self.split.cache_dir
        split = dataclasses.replace(self.split, cache_dir=resolve(cache) if cache is not None else None)
        return dataclasses.replace(self, **sources, split=split)


def load_data(config: DataConfig, spec: GraphSpec) -> tuple[list[Data], list[Data] | None, list[Data] | None]:
    """(train, val or None, test or None) graphs built with the backbone's ``spec``."""
    if config.dataset is not None:
        splits = get_dataset(config.dataset).split(config.split)
        graphs = lambda records: to_graphs(records, spec, config.fidelities)  # noqa: E731
        return graphs(splits.train_low + splits.train_high), graphs(splits.val) or None, graphs(splits.test) or None
    splits = [
        [g for source in sources for g in source.read(config.fidelities, spec)]
        for sources in (config.train, config.val, config.test)
    ]
    return splits[0], splits[1] or None, splits[2] or None
