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
it is almost surely a typo, and so is a fidelity at which no frame has any label. Both errors
name the keys looked for and the keys the file's frames do have (info, arrays, calculator results).

Bad files. A missing, empty or directory path, a file whose format ``ase.io`` cannot tell, or
one that holds no structure, is an error naming the path. A frame that cannot be parsed (an
atom-count line that does not match its atom lines, a non-numeric value, a column or label of
the wrong width, a NaN or inf label) is a :class:`~mfwrap.data.graph.StructureError` that names
the file and the frame, e.g. ``train.xyz: frame 3 (line 25): ...``. An extxyz file is split
into frames by its atom-count lines in one pass and each frame is parsed once, so the failing
frame is known.

Partial labels. A target present in some frames of a file and absent in others is masked per
frame; how many frames lack it is logged (logger ``mfwrap.data.readers``, level WARNING, so a
``mfwrap train`` run shows it), e.g. ``train.xyz (fidelity 'high'): forces absent in 12 of 100
frames (masked)``; so are frames without any label at a fidelity (skipped), with the keys looked for.

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

import io
import itertools
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Iterable, Iterator, Mapping, Sequence, TypeVar

import ase.db
import ase.io
import numpy as np
import torch
from ase import Atoms
from ase.io.extxyz import read_xyz
from ase.io.formats import UnknownFileTypeError, filetype, ioformats, open_with_compression
from ase.stress import voigt_6_to_full_3x3_stress

from mfwrap.data import keys as K
from mfwrap.data.graph import EV_PER_A3_TO_GPA, AtomicGraph, GraphSpec, StructureError, to_graph

LOG = logging.getLogger(__name__)

DEFAULT_KEYS: Mapping[str, str] = {K.ENERGY: "energy", K.FORCES: "forces", K.STRESS: "stress", K.MAGMOMS: "magmoms"}
"""The standard ASE names of the four targets."""

_DB_SUFFIXES = (".db", ".json", ".aselmdb")


class LabelKeyError(ValueError):
    """A label key that no frame has, or a fidelity at which no frame has a label; the message names
    the file, the keys looked for and the keys its frames have."""


@dataclass
class LabelledStructure:
    """One frame at one fidelity.

    Attributes:
        atoms: the geometry (shared, not copied, between the fidelities of one frame).
        fidelity: the fidelity's name.
        labels: the labels present, by target: "energy" float eV (total), "forces" (n, 3) eV/Å,
            "stress" (3, 3) GPa, "magmoms" (n,) μB. A missing target is an absent label.
        name: how error messages name the frame, e.g. ``"train.xyz: frame 12"``.
    """

    atoms: Atoms
    fidelity: str
    labels: dict[str, Any] = field(default_factory=dict)
    name: str = "structure"

    def to_graph(
        self, spec: GraphSpec, fidelities: Mapping[str, int], dtype: torch.dtype = torch.float32, **kwargs
    ) -> AtomicGraph:
        """The frame as a graph for ``spec``, with fidelity index ``fidelities[self.fidelity]``."""
        if self.fidelity not in fidelities:
            raise KeyError(f"{self.name}: fidelity {self.fidelity!r} is not one of {list(fidelities)}")
        return to_graph(
            self.atoms,
            spec,
            fidelity=fidelities[self.fidelity],
            labels=self.labels,
            name=self.name,
            dtype=dtype,
            **kwargs,
        )


def to_graphs(
    records: Sequence[LabelledStructure], spec: GraphSpec, fidelities: Sequence[str] | Mapping[str, int], **kwargs
) -> list[AtomicGraph]:
    """Graphs of ``records`` for ``spec``; ``fidelities`` is the ordered list of names (index =
    position) or an explicit name → index mapping. Keyword arguments go to :func:`to_graph`."""
    index = fidelities if isinstance(fidelities, Mapping) else {name: i for i, name in enumerate(fidelities)}
    return [record.to_graph(spec, index, **kwargs) for record in records]


T = TypeVar("T")


def _select(items: Iterable[T], index: str | int | slice) -> list[T]:
    """``items[index]`` in ase's index syntax (":", an int or a slice) as a list; a selection
    with non-negative bounds stops consuming ``items`` at its end (``limit`` reads only that much)."""
    if index == ":":
        index = slice(None)
    elif isinstance(index, int):
        index = slice(index, index + 1 or None)
    if (index.start or 0) >= 0 and (index.stop is None or index.stop >= 0) and (index.step or 1) > 0:
        return list(itertools.islice(items, index.start, index.stop, index.step))
    return list(items)[index]


def _extxyz_texts(path: Path) -> Iterator[tuple[int, str]]:
    """(first line number, text) of each frame of an extxyz file, split by the atom-count lines
    (and any ``VECn`` cell lines after the atoms), as ``ase.io.extxyz`` does; a blank line ends it.

    Raises StructureError naming the frame whose count line is not a number, or which the file
    ends inside.
    """
    with open_with_compression(str(path)) as handle:
        line, line_number = handle.readline(), 1
        for frame in itertools.count():
            if not line.strip():
                return
            try:
                n_atoms = int(line)
            except ValueError:
                hint = f" (does frame {frame - 1} have more atom lines than its count?)" if frame else ""
                raise StructureError(
                    f"{path.name}: frame {frame} (line {line_number}): expected the atom count, "
                    f"got {line.strip()[:60]!r}{hint}"
                ) from None
            chunk = [line, *(handle.readline() for _ in range(n_atoms + 1))]
            if not chunk[-1]:
                raise StructureError(
                    f"{path.name}: frame {frame} (line {line_number}): the file ends after "
                    f"{max(sum(map(bool, chunk)) - 2, 0)} of its {n_atoms} atom lines"
                )
            line = handle.readline()
            while line.lstrip().startswith("VEC"):
                chunk.append(line)
                line = handle.readline()
            yield line_number, "".join(chunk)
            line_number += len(chunk)


def _parse_extxyz(path: Path, frame: int, line_number: int, text: str) -> Atoms:
    """One frame's text as Atoms; any parse error becomes a StructureError naming the frame."""
    try:
        return next(read_xyz(io.StringIO(text), index=0))
    except Exception as error:  # ase raises XYZError, ValueError, TypeError, IndexError, ...
        lines = text.splitlines()
        counts = [line_number + i for i, line in enumerate(lines[2:], 2) if line.strip().isdigit()]
        hint = (
            f" (line {counts[0]} looks like the next frame's count: fewer atom lines than {lines[0].strip()}?)"
            if counts
            else ""
        )
        raise StructureError(f"{path.name}: frame {frame} (line {line_number}): {error}{hint}") from error


def _ase_frames(path: Path, format: str) -> Iterator[tuple[int, Atoms]]:
    """(index, atoms) of each frame of a file in another ``ase.io`` format, read one by one."""
    frames = ase.io.iread(str(path), index=":", format=format)
    for frame in itertools.count():
        try:
            atoms = next(frames)
            if not isinstance(atoms, Atoms):
                raise TypeError(f"the reader returned {type(atoms).__name__}, not a structure")
        except StopIteration:
            return
        except Exception as error:
            raise StructureError(f"{path.name}: frame {frame}: ase.io cannot read it as {format!r}: {error}") from error
        yield frame, atoms


def _format(path: Path) -> str:
    """The ``ase.io`` format of a structure file; an error naming the path if there is no file or
    ``ase.io`` cannot tell its format."""
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, not a structure file; give a file (extxyz, ASE db, ...)")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise StructureError(f"{path}: the file is empty; it holds no structures")
    if path.suffix in _DB_SUFFIXES:
        return "db"
    try:
        format = filetype(str(path))
    except UnknownFileTypeError:
        format = None
    if format not in ioformats:  # filetype may return a bare suffix ("txt") that no reader has
        raise StructureError(
            f"{path}: ase.io cannot tell the format of this file; give structures as extxyz (.xyz, .extxyz), "
            "an ASE db (.db) or another format ase.io reads, named with its usual suffix"
        )
    return format


def _frames(path: Path, index: str | int | slice) -> list[tuple[str, Atoms]]:
    """(name, atoms) of the selected frames; an ASE db row's key-value pairs and data go to ``info``;
    an error naming the path if none is selected."""
    frames = _read_frames(path, index)
    if not frames:
        where = "" if index == ":" else f" at index {index}"
        raise StructureError(f"{path}: no structures in the file{where}")
    return frames


def _read_frames(path: Path, index: str | int | slice) -> list[tuple[str, Atoms]]:
    format = _format(path)
    if format == "db":
        with ase.db.connect(str(path)) as db:
            rows = _select(db.select(), index)
        frames = []
        for row in rows:
            atoms = row.toatoms()
            atoms.info.update(row.key_value_pairs)
            atoms.info.update(row.data)
            frames.append((f"{path.name}: row id={row.id}", atoms))
        return frames
    if format == "extxyz":
        # Parsed as split, so a frame's error comes before the next frame's count line is read.
        parsed = ((i, _parse_extxyz(path, i, line, text)) for i, (line, text) in enumerate(_extxyz_texts(path)))
        return [(f"{path.name}: frame {i}", atoms) for i, atoms in _select(parsed, index)]
    return [(f"{path.name}: frame {i}", atoms) for i, atoms in _select(_ase_frames(path, format), index)]


def read_structures(path: str | Path, index: str | int | slice = ":") -> list[Atoms]:
    """The structures of ``path`` (any file :func:`read_fidelities` reads) with whatever labels and
    keys they carry; ``index`` as there. Errors name the path (and the frame), as there."""
    return [atoms for _, atoms in _frames(Path(path), index)]


_MISSING = object()


def _lookup(atoms: Atoms, key: str) -> Any:
    """The value stored under ``key`` in info, arrays or the calculator's results, else _MISSING."""
    if key in atoms.info:
        return atoms.info[key]
    if key in atoms.arrays:
        return atoms.arrays[key]
    results = getattr(atoms.calc, "results", None) or {}
    return results.get(key, _MISSING)


def _keys_held(frames: Sequence[tuple[str, Atoms]]) -> str:
    """The keys the frames hold values under, by where :func:`_lookup` looks, for error messages."""
    places: dict[str, set[str]] = {"info": set(), "arrays": set(), "calculator results": set()}
    for _, atoms in frames:
        places["info"].update(map(str, atoms.info))
        places["arrays"].update(key for key in atoms.arrays if key not in ("numbers", "positions"))
        places["calculator results"].update(getattr(atoms.calc, "results", None) or {})
    held = [f"{place} {sorted(keys)}" for place, keys in places.items() if keys]
    return "the frames have " + ("; ".join(held) if held else "no info, arrays or calculator results")


def _looked_for(key_map: Mapping[str, str | None]) -> str:
    """``energy under 'energy', forces under 'forces'``: the keys a fidelity's labels are read from."""
    wanted = [f"{target} under {key!r}" for target, key in key_map.items() if key is not None]
    return ", ".join(wanted) if wanted else "no key (every target is None)"


def _convert(target: str, value: Any, n_atoms: int, name: str) -> Any:
    """File units and layout → mfwrap's (stress: Voigt or 3×3 eV/Å^3 → 3×3 GPa), checked: a
    non-numeric, wrongly shaped or non-finite (NaN, inf) label is a StructureError naming ``name``."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise StructureError(f"{name}: {target} is not numeric: {str(value)[:60]!r}") from None
    expected = {
        K.ENERGY: "a scalar (total eV)",
        K.FORCES: f"({n_atoms}, 3)",
        K.MAGMOMS: f"({n_atoms},)",
        K.STRESS: "Voigt (6,) or (3, 3)",
    }[target]
    if target == K.ENERGY:
        ok = array.size == 1
    elif target == K.STRESS:
        ok = array.shape == (6,) or array.size == 9
    else:
        ok = array.ndim >= 1 and array.shape[0] == n_atoms and array.size == n_atoms * (3 if target == K.FORCES else 1)
    if not ok:
        raise StructureError(f"{name}: {target} has shape {array.shape}, expected {expected}")
    finite = np.isfinite(array)
    if not finite.all():
        per_atom = target in (K.FORCES, K.MAGMOMS)
        where = f" at atom {int(np.argmin(finite.reshape(n_atoms, -1).all(axis=1)))}" if per_atom else ""
        raise StructureError(f"{name}: {target} has non-finite values (NaN or inf){where}")
    if target == K.ENERGY:
        return float(array.reshape(()))
    if target == K.STRESS:
        return (voigt_6_to_full_3x3_stress(array) if array.shape == (6,) else array.reshape(3, 3)) * EV_PER_A3_TO_GPA
    return array.reshape(n_atoms, 3) if target == K.FORCES else array.reshape(n_atoms)


def labels_of(atoms: Atoms, key_map: Mapping[str, str | None], name: str = "structure") -> dict[str, Any]:
    """The labels of ``atoms`` that are present, by target, in mfwrap's units (see the module
    docstring); ``key_map`` maps targets to names in the file (None = not read)."""
    labels = {}
    for target, key in key_map.items():
        value = _MISSING if key is None else _lookup(atoms, key)
        if value is not _MISSING and value is not None:
            labels[target] = _convert(target, value, len(atoms), name)
    return labels


def read_fidelities(
    path: str | Path,
    key_maps: Mapping[str, Mapping[str, str | None]],
    *,
    index: str | int | slice = ":",
    drop_unlabelled: bool = True,
    strict: bool | Collection[str] = True,
) -> list[LabelledStructure]:
    """Read ``path`` once into records for one or several fidelities.

    Args:
        path: extxyz (or any format ``ase.io.read`` knows) or an ASE db (.db, .json, .aselmdb).
        key_maps: fidelity name → {target: key in the file}; a target left out (or None) is not
            read, so its label is absent at that fidelity.
        index: frames to read (ase's index syntax: ":", an int or a slice); reading stops at
            the end of a slice with non-negative bounds.
        drop_unlabelled: skip a (frame, fidelity) that has no label at all; a fidelity at which
            every frame is skipped is an error.
        strict: a key that no frame has is an error (else its label is absent everywhere); a
            collection of targets: an error for the keys of those targets only.

    Returns:
        records ordered by frame, then by fidelity in ``key_maps`` order. A target present in
        some of a fidelity's records but not all is logged with its count (see the module
        docstring), as are dropped unlabelled frames.

    Raises:
        FileNotFoundError for a missing file. ValueError for an unknown target or a directory.
        LabelKeyError for (``strict``) a key found in no frame or (``drop_unlabelled``) a
        fidelity with no labelled frame, naming the keys looked for and the keys the frames have.
        StructureError naming the file for an empty file, one of a format ``ase.io`` cannot tell
        or one without structures, and naming the frame for a frame that cannot be parsed or a
        label that is not numeric, of the wrong shape or not finite.
    """
    path = Path(path)
    for fidelity, key_map in key_maps.items():
        unknown = set(key_map) - set(K.TARGETS)
        if unknown:
            raise ValueError(
                f"key map of fidelity {fidelity!r}: unknown target(s) {sorted(unknown)}; known are {list(K.TARGETS)}"
            )
    requested = [(f, t) for f, key_map in key_maps.items() for t, key in key_map.items() if key is not None]
    required = set(K.TARGETS) if strict is True else set() if strict is False else set(strict)
    frames = _frames(path, index)
    records = []
    labelled, kept = Counter(), Counter()  # records with a label, by (fidelity, target); records, by fidelity
    for name, atoms in frames:
        for fidelity, key_map in key_maps.items():
            labels = labels_of(atoms, key_map, name)
            if labels or not drop_unlabelled:
                records.append(LabelledStructure(atoms, fidelity, labels, name))
                labelled.update((fidelity, target) for target in labels)
                kept[fidelity] += 1
    missing = [f"{t} of {f!r} under {key_maps[f][t]!r}" for f, t in requested if not labelled[f, t] and t in required]
    if missing:
        raise LabelKeyError(f"{path}: no frame has {', '.join(missing)}; {_keys_held(frames)}; check the key names")
    for fidelity, key_map in key_maps.items():
        if not kept[fidelity]:
            raise LabelKeyError(
                f"{path}: no frame with a label at fidelity {fidelity!r}: looked for {_looked_for(key_map)}; "
                f"{_keys_held(frames)}; name the keys that hold the labels"
            )
        if kept[fidelity] < len(frames):
            LOG.warning(
                "%s (fidelity %r): no label in %d of %d frames (skipped; looked for %s)",
                path.name,
                fidelity,
                len(frames) - kept[fidelity],
                len(frames),
                _looked_for(key_map),
            )
    for fidelity, target in requested:
        if 0 < labelled[fidelity, target] < kept[fidelity]:
            LOG.warning(
                "%s (fidelity %r): %s absent in %d of %d frames (masked)",
                path.name,
                fidelity,
                target,
                kept[fidelity] - labelled[fidelity, target],
                kept[fidelity],
            )
    return records


def read_dataset(
    path: str | Path, fidelity: str, keys: Mapping[str, str | None] | None = None, **kwargs
) -> list[LabelledStructure]:
    """Read ``path`` at one fidelity. ``keys`` maps targets to names in the file; by default the
    standard ASE names, each read where present (not strict, as the defaults are a wish list)."""
    if keys is None:
        return read_fidelities(path, {fidelity: DEFAULT_KEYS}, strict=False, **kwargs)
    return read_fidelities(path, {fidelity: keys}, **kwargs)
