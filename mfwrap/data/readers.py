"""Reading labelled datasets (extxyz, ASE db, anything ``ase.io`` reads) into labelled structures.

A :class:`LabelledStructure` is one frame at one fidelity: the geometry (``ase.Atoms``), the
fidelity's name, and the labels that are present, in mfwrap's units. It becomes a graph for a
given backbone with :meth:`LabelledStructure.to_graph` (or :func:`to_graphs` for a list), so one
read serves any backbone's :class:`~mfwrap.data.graph.GraphSpec`.

Where labels are found. A *key map* says, per target (energy, forces, stress, magmoms), under
which name the file stores it; each name is looked up in ``atoms.info``, then ``atoms.arrays``,
then the results of an attached (SinglePoint) calculator — where ``ase.io`` puts the standard
``energy``/``forces``/``stress``/``magmoms`` of an extxyz file; for an ASE db, a row's
``key_value_pairs`` and ``data`` are looked up as ``info``. A name that a frame lacks gives an
absent label (a False mask, never zeros that count); a name that *no* frame has is an error, as
it is almost surely a typo.

Units. Files hold energy in eV (total), forces in eV/Å, magmoms in μB and stress in ASE's
convention, eV/Å^3 as Voigt (xx, yy, zz, yz, xz, xy) or 3×3, ``σ = (1/V) ∂E/∂ε``; stress is
converted to GPa (× :data:`~mfwrap.data.graph.EV_PER_A3_TO_GPA`, same sign).

Several fidelities in one file (the same frames, e.g. PBEsol and r2SCAN energies)::

    records = read_fidelities("train.xyz", {
        "pbesol": {"energy": "energy", "forces": "forces"},
        "r2scan": {"energy": "mtt::r2scan_energy"},
    })
    graphs = to_graphs(records, backbone.graph_spec, fidelities=["pbesol", "r2scan"])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import ase.db
import ase.io
import numpy as np
import torch
from ase import Atoms
from ase.stress import voigt_6_to_full_3x3_stress

from mfwrap.data import keys as K
from mfwrap.data.graph import EV_PER_A3_TO_GPA, AtomicGraph, GraphSpec, StructureError, to_graph

DEFAULT_KEYS: Mapping[str, str] = {K.ENERGY: "energy", K.FORCES: "forces", K.STRESS: "stress", K.MAGMOMS: "magmoms"}
"""The standard ASE names of the four targets."""

_DB_SUFFIXES = (".db", ".json", ".aselmdb")


@dataclass
class LabelledStructure:
    """One frame at one fidelity.

    Attributes:
        atoms: the geometry (shared, not copied, between the fidelities of one frame).
        fidelity: the fidelity's name.
        labels: the labels present, by target: "energy" float eV (total), "forces" (n, 3) eV/Å,
            "stress" (3, 3) GPa, "magmoms" (n,) μB. A missing target is an absent label.
        name: how error messages name the frame, e.g. ``"train.xyz:12"``.
    """

    atoms: Atoms
    fidelity: str
    labels: dict[str, Any] = field(default_factory=dict)
    name: str = "structure"

    def to_graph(self, spec: GraphSpec, fidelities: Mapping[str, int], dtype: torch.dtype = torch.float32, **kwargs) -> AtomicGraph:
        """The frame as a graph for ``spec``, with fidelity index ``fidelities[self.fidelity]``."""
        if self.fidelity not in fidelities:
            raise KeyError(f"{self.name}: fidelity {self.fidelity!r} is not one of {list(fidelities)}")
        return to_graph(
            self.atoms, spec, fidelity=fidelities[self.fidelity], labels=self.labels, name=self.name, dtype=dtype, **kwargs
        )


def to_graphs(
    records: Sequence[LabelledStructure], spec: GraphSpec, fidelities: Sequence[str] | Mapping[str, int], **kwargs
) -> list[AtomicGraph]:
    """Graphs of ``records`` for ``spec``; ``fidelities`` is the ordered list of names (index =
    position) or an explicit name → index mapping. Keyword arguments go to :func:`to_graph`."""
    index = fidelities if isinstance(fidelities, Mapping) else {name: i for i, name in enumerate(fidelities)}
    return [record.to_graph(spec, index, **kwargs) for record in records]


def _frames(path: Path, index: str | int | slice) -> list[tuple[str, Atoms]]:
    """(name, atoms) of the selected frames; an ASE db row's key-value pairs and data go to ``info``."""
    if path.suffix in _DB_SUFFIXES:
        with ase.db.connect(str(path)) as db:
            rows = list(db.select())
        frames = []
        for row in rows:
            atoms = row.toatoms()
            atoms.info.update(row.key_value_pairs)
            atoms.info.update(row.data)
            frames.append((f"{path.name}:id={row.id}", atoms))
    else:
        frames = [(f"{path.name}:{i}", atoms) for i, atoms in enumerate(ase.io.read(str(path), index=":"))]
    chosen = frames[slice(None) if index == ":" else index]
    return chosen if isinstance(chosen, list) else [chosen]


_MISSING = object()


def _lookup(atoms: Atoms, key: str) -> Any:
    """The value stored under ``key`` in info, arrays or the calculator's results, else _MISSING."""
    if key in atoms.info:
        return atoms.info[key]
    if key in atoms.arrays:
        return atoms.arrays[key]
    results = getattr(atoms.calc, "results", None) or {}
    return results.get(key, _MISSING)


def _convert(target: str, value: Any, name: str) -> Any:
    """File units and layout → mfwrap's (stress: Voigt or 3×3 eV/Å^3 → 3×3 GPa)."""
    if target == K.ENERGY:
        array = np.asarray(value, dtype=np.float64)
        if array.size != 1:
            raise StructureError(f"{name}: energy has shape {array.shape}, expected a scalar (total eV)")
        return float(array.reshape(()))
    if target == K.STRESS:
        stress = np.asarray(value, dtype=np.float64)
        if stress.shape == (6,):
            stress = voigt_6_to_full_3x3_stress(stress)
        elif stress.size == 9:
            stress = stress.reshape(3, 3)
        else:
            raise StructureError(f"{name}: stress has shape {stress.shape}, expected Voigt (6,) or (3, 3)")
        return stress * EV_PER_A3_TO_GPA
    return np.asarray(value, dtype=np.float64)


def labels_of(atoms: Atoms, key_map: Mapping[str, str | None], name: str = "structure") -> dict[str, Any]:
    """The labels of ``atoms`` that are present, by target, in mfwrap's units (see the module
    docstring); ``key_map`` maps targets to names in the file (None = not read)."""
    labels = {}
    for target, key in key_map.items():
        value = _MISSING if key is None else _lookup(atoms, key)
        if value is not _MISSING and value is not None:
            labels[target] = _convert(target, value, name)
    return labels


def read_fidelities(
    path: str | Path,
    key_maps: Mapping[str, Mapping[str, str | None]],
    *,
    index: str | int | slice = ":",
    drop_unlabelled: bool = True,
    strict: bool = True,
) -> list[LabelledStructure]:
    """Read ``path`` once into records for one or several fidelities.

    Args:
        path: extxyz (or any format ``ase.io.read`` knows) or an ASE db (.db, .json, .aselmdb).
        key_maps: fidelity name → {target: key in the file}; a target left out (or None) is not
            read, so its label is absent at that fidelity.
        index: frames to read (ase's index syntax: ":", an int or a slice).
        drop_unlabelled: skip a (frame, fidelity) that has no label at all.
        strict: a key that no frame has is an error (else its label is absent everywhere).

    Returns:
        records ordered by frame, then by fidelity in ``key_maps`` order.

    Raises:
        ValueError for an unknown target or (``strict``) a key found in no frame; StructureError
        (naming the frame) for a label of the wrong shape.
    """
    path = Path(path)
    for fidelity, key_map in key_maps.items():
        unknown = set(key_map) - set(K.TARGETS)
        if unknown:
            raise ValueError(f"key map of fidelity {fidelity!r}: unknown target(s) {sorted(unknown)}; known are {list(K.TARGETS)}")
    found = {(f, t): False for f, key_map in key_maps.items() for t, key in key_map.items() if key is not None}
    records = []
    for name, atoms in _frames(path, index):
        for fidelity, key_map in key_maps.items():
            labels = labels_of(atoms, key_map, name)
            found.update({(fidelity, target): True for target in labels})
            if labels or not drop_unlabelled:
                records.append(LabelledStructure(atoms, fidelity, labels, name))
    missing = [f"{target} of {f!r} under {key_maps[f][target]!r}" for (f, target), seen in found.items() if not seen]
    if missing and strict:
        raise ValueError(f"{path}: no frame has {', '.join(missing)}; check the key names")
    return records


def read_dataset(
    path: str | Path, fidelity: str, keys: Mapping[str, str | None] | None = None, **kwargs
) -> list[LabelledStructure]:
    """Read ``path`` at one fidelity. ``keys`` maps targets to names in the file; by default the
    standard ASE names, each read where present (not strict, as the defaults are a wish list)."""
    if keys is None:
        return read_fidelities(path, {fidelity: DEFAULT_KEYS}, strict=False, **kwargs)
    return read_fidelities(path, {fidelity: keys}, **kwargs)
