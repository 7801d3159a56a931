"""Diverse periodic structures from the AFLOW prototype library that pymatgen ships (offline).

``pymatgen/analysis/prototypes/aflow_prototypes.json.gz`` holds 288 crystal structures, each tagged
with its AFLOW prototype label (``AB_hP6_154_a_b``: stoichiometry, Pearson symbol, space group,
Wyckoff letters; 273 distinct labels, a few labels occur with different parameters).
:func:`prototype_structures` turns them into new structures:

1. **Pick** prototypes of at most ``max_atoms`` atoms from one *part* of the library, in the order of
   successive ``rng.permutation`` of that part (every prototype once before any twice).
2. **Decorate**: the sites of one species in the prototype form a class; each class gets its own element,
   drawn without replacement from ``elements`` (prototypes with more classes than ``elements`` are skipped).
3. **Rescale** the lattice so that a typical contact sits at the sum of covalent radii: with
   ρ_i = min_j d_ij / (r_i + r_j) (periodic images included; j = i: the shortest lattice vector), cell and
   positions are multiplied by 1 / median_i ρ_i. Radii: ``ase.data.covalent_radii`` (Cordero 2008), Å.
   The volume per atom is then kept within [:data:`VOLUME_RANGE`] × the mean over the atoms of the
   elemental solids' volumes per atom (pymatgen's ``Element.molar_volume``): a smaller one is scaled up to
   the floor (anions packed like metals, e.g. F on an hcp lattice), a larger one (isolated clusters) is a
   misfit. A misfit, or a tightest contact below :data:`MIN_SPREAD` × its typical one (a prototype with
   short and long bonds, decorated with ill-fitting elements), is redrawn, up to :data:`DECORATION_TRIES`
   times, then that pick is skipped for the next prototype in the order.
4. **Equilibrate** (optional): given a model's ``pressure``, the rescaled structures are brought toward
   zero pressure by a few isotropic secant steps (:func:`equilibrate_volume`), so that they sit near the
   model's equilibrium volume rather than at the radii's guess.
5. **Strain** the cell by (I + ε), ε symmetric with its 6 components uniform in [-strain, strain]
   (fractional coordinates kept), then **rattle** every position by N(0, rattle²) Å per component.
   If that brings a contact below :data:`MIN_BOND_RATIO` × (r_i + r_j), cell and positions are scaled up
   until the tightest contact is at that bound, so no structure made here has atoms closer than it.

Everything random follows from ``numpy.random.default_rng(seed)``.

**The two parts.** The library is split once, by a rule independent of any seed: a prototype belongs to
part ``"replay"`` when the first byte of SHA-256(its AFLOW label, UTF-8) is even, else to ``"test"``.
Entries sharing a label fall in the same part, so the replay pool (:mod:`mfwrap.replay`) and the
out-of-domain test set (:mod:`mfwrap.datasets.other_chemistries`) never share a prototype.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, covalent_radii
from ase.geometry import get_distances, minkowski_reduce

PARTS = ("replay", "test")
MIN_BOND_RATIO = 0.8  # no two atoms closer than this × the sum of their covalent radii
MIN_SPREAD = 0.9  # a decoration's tightest contact / its typical one (before strain and rattle), at least
VOLUME_RANGE = (0.4, 2.5)  # volume per atom / mean elemental volume per atom, bounds
DECORATION_TRIES = 4
EQUILIBRATION_STEPS = 3  # pressure evaluations of equilibrate_volume
MAX_SCALE_STEP = 0.1  # largest change of a cell length per equilibration step: exp(±0.1)

_DEFAULT_SYMBOLS = (
    "Li Na K Mg Ca Sr Ba Sc Ti V Cr Mn Fe Co Ni Cu Zn Zr Nb Mo Ag B C N O F Al Si P S Cl Ge Se Sn Br"
).split()
DEFAULT_ELEMENTS: tuple[int, ...] = tuple(atomic_numbers[s] for s in _DEFAULT_SYMBOLS)
"""35 common elements across the periodic table (alkali, alkaline earth, 3d and 4d metals, p-block,
halogens), all present in the Materials Project trajectories that CHGNet was trained on."""


@dataclass(frozen=True)
class Prototype:
    """One library entry: ``label`` its AFLOW label, ``cell`` (3, 3) Å, ``fractional`` (n, 3),
    ``classes`` (n,) the species class of each site (0, 1, ... in order of first appearance)."""

    label: str
    cell: np.ndarray
    fractional: np.ndarray
    classes: np.ndarray

    @property
    def part(self) -> str:
        """``"replay"`` or ``"test"``, by the rule in the module docstring."""
        return part_of(self.label)


def part_of(label: str) -> str:
    """The part a prototype label belongs to: "replay" if SHA-256(label)[0] is even, else "test"."""
    return PARTS[hashlib.sha256(label.encode("utf-8")).digest()[0] % 2]


@functools.lru_cache(maxsize=1)
def library() -> tuple[Prototype, ...]:
    """The AFLOW prototypes pymatgen ships, in file order (read as JSON; the package is not imported)."""
    spec = importlib.util.find_spec("pymatgen.analysis.prototypes")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("pymatgen's prototype library is not installed (pip install pymatgen)")
    path = Path(spec.submodule_search_locations[0]) / "aflow_prototypes.json.gz"
    prototypes = []
    for entry in json.loads(gzip.decompress(path.read_bytes())):
        structure = entry["snl"]
        species = [site["species"][0]["element"] for site in structure["sites"]]
        _, first, classes = np.unique(species, return_index=True, return_inverse=True)
        order = np.argsort(np.argsort(first))  # class ids in order of first appearance
        prototypes.append(
            Prototype(
                label=entry["tags"]["aflow"],
                cell=np.asarray(structure["lattice"]["matrix"], dtype=np.float64),
                fractional=np.asarray([site["abc"] for site in structure["sites"]], dtype=np.float64),
                classes=order[classes.reshape(-1)],
            )
        )
    return tuple(prototypes)


def contact_ratios(atoms: Atoms) -> np.ndarray:
    """ρ_i = min_j d_ij / (r_i + r_j) per atom (n,), covalent radii r, periodic images included
    (j = i: the shortest lattice vector)."""
    radii = covalent_radii[atoms.numbers]
    _, distances = get_distances(atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    shortest_vector = np.linalg.norm(minkowski_reduce(atoms.cell.array)[0], axis=1).min()
    np.fill_diagonal(distances, shortest_vector)
    return (distances / (radii[:, None] + radii[None, :])).min(axis=1)


def min_bond_ratio(atoms: Atoms) -> float:
    """min over atom pairs (periodic images included) of d_ij / (r_i + r_j), covalent radii r."""
    return float(contact_ratios(atoms).min())


def _scaled(atoms: Atoms, factor: float) -> Atoms:
    atoms.set_cell(atoms.cell.array * factor, scale_atoms=True)
    return atoms


def _decorate(prototype: Prototype, elements: np.ndarray, rng: np.random.Generator) -> Atoms | None:
    """The prototype decorated and rescaled (steps 2 and 3 of the module docstring), or None."""
    for _ in range(DECORATION_TRIES):
        species = rng.choice(elements, size=prototype.classes.max() + 1, replace=False)
        atoms = Atoms(species[prototype.classes], scaled_positions=prototype.fractional, cell=prototype.cell, pbc=True)
        ratios = contact_ratios(atoms)
        if ratios.min() < MIN_SPREAD * np.median(ratios):
            continue
        _scaled(atoms, 1.0 / np.median(ratios))
        volume = atoms.get_volume() / len(atoms) / np.mean(_elemental_volumes()[atoms.numbers])
        if volume <= VOLUME_RANGE[1]:
            return _scaled(atoms, max(1.0, (VOLUME_RANGE[0] / volume) ** (1 / 3)))
    return None


@functools.lru_cache(maxsize=1)
def _elemental_volumes() -> np.ndarray:
    """Volume per atom of each element's solid, Å^3, index Z (NaN where pymatgen has none)."""
    import warnings

    from pymatgen.core import Element

    volumes = np.full(len(covalent_radii), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "No data available" for a few heavy elements
        for z in range(1, min(len(volumes), 119)):
            molar = Element.from_Z(z).molar_volume  # cm^3/mol
            if molar is not None:
                volumes[z] = float(molar) / 0.602214076  # cm^3/mol -> Å^3/atom
    return volumes


def equilibrate_volume(
    structures: list[Atoms],
    pressure: Callable[[list[Atoms]], np.ndarray],
    steps: int = EQUILIBRATION_STEPS,
    bulk_modulus: float = 50.0,
) -> None:
    """Scale each structure isotropically, in place, toward zero ``pressure`` (GPa, positive = compressed).

    Step k: Δ ln V = clip(P / B, ±3 :data:`MAX_SCALE_STEP`), B the bulk modulus, ``bulk_modulus`` GPa at
    first, then the secant -ΔP / Δ ln V of the last step (clipped to [5, 500] GPa); ``steps`` pressure
    evaluations of all the structures at once.
    """
    moduli = np.full(len(structures), float(bulk_modulus))
    current = np.asarray(pressure(structures), dtype=np.float64)
    for step in range(steps):
        change = np.clip(current / moduli, -3 * MAX_SCALE_STEP, 3 * MAX_SCALE_STEP)
        for atoms, d in zip(structures, change):
            _scaled(atoms, float(np.exp(d / 3)))
        if step == steps - 1:
            break
        new = np.asarray(pressure(structures), dtype=np.float64)
        moved = np.abs(change) > 1e-6
        moduli[moved] = np.clip(-(new - current)[moved] / change[moved], 5.0, 500.0)
        current = new


def random_strain(rng: np.random.Generator, strain: float) -> np.ndarray:
    """I + ε, ε symmetric (3, 3) with its 6 independent components uniform in [-strain, strain]."""
    upper = np.triu(rng.uniform(-strain, strain, (3, 3)))
    return np.eye(3) + upper + np.triu(upper, 1).T


def prototype_structures(
    n: int,
    *,
    elements: tuple[int, ...] | list[int] = DEFAULT_ELEMENTS,
    seed: int = 0,
    part: str = "replay",
    max_atoms: int = 24,
    rattle: float = 0.05,
    strain: float = 0.03,
    pressure: Callable[[list[Atoms]], np.ndarray] | None = None,
) -> list[Atoms]:
    """``n`` decorated, rescaled, strained and rattled prototypes of one ``part`` (module docstring).

    Args:
        n: structures to make (>= 0).
        elements: atomic numbers to decorate with (distinct per structure).
        seed: seeds the picks, the decoration, the strain and the rattle.
        part: "replay" or "test" (disjoint sets of prototypes).
        max_atoms: largest prototype cell used.
        rattle: σ of the Gaussian displacements, Å.
        strain: bound on each component of the symmetric strain ε.
        pressure: a model's pressures (GPa, -tr σ / 3, positive = compressed) of a list of structures;
            given, the decorated structures are brought toward zero pressure before strain and rattle
            (:func:`equilibrate_volume`). The random draws do not depend on it.

    Returns:
        periodic ``ase.Atoms``, ``info``: "prototype" (AFLOW label), "part", "source" = "prototypes".
    """
    elements = np.unique(np.asarray(elements, dtype=np.int64))
    if part not in PARTS:
        raise ValueError(f"part must be one of {list(PARTS)}, got {part!r}")
    if n < 0 or max_atoms < 1 or rattle < 0 or not 0 <= strain < 1:
        raise ValueError(
            f"need n >= 0, max_atoms >= 1, rattle >= 0, 0 <= strain < 1; got {n}, {max_atoms}, {rattle}, {strain}"
        )
    if elements.size == 0 or elements.min() < 1 or elements.max() >= len(covalent_radii):
        raise ValueError(f"elements must be a non-empty list of atomic numbers, got {elements.tolist()}")
    pool = [p for p in library() if p.part == part and len(p.classes) <= max_atoms and p.classes.max() < elements.size]
    if n and not pool:
        raise ValueError(f"no prototype of part {part!r} has <= {max_atoms} atoms and <= {elements.size} species")
    rng = np.random.default_rng(seed)
    made: list[tuple[Atoms, np.ndarray, np.ndarray]] = []  # decorated structure, I + ε, unit Gaussian noise
    while len(made) < n:
        before = len(made)
        for pick in rng.permutation(len(pool)):
            atoms = _decorate(pool[pick], elements, rng)
            if atoms is None:
                continue
            atoms.info.update(prototype=pool[pick].label, part=part, source="prototypes")
            made.append((atoms, random_strain(rng, strain), rng.standard_normal(atoms.positions.shape)))
            if len(made) == n:
                break
        if len(made) == before:
            raise ValueError(f"no prototype of part {part!r} takes the elements {elements.tolist()} (module docstring)")
    if pressure is not None and made:
        equilibrate_volume([atoms for atoms, _, _ in made], pressure)
    structures = []
    for atoms, deformation, noise in made:
        atoms.set_cell(atoms.cell.array @ deformation, scale_atoms=True)
        atoms.positions = atoms.positions + rattle * noise
        ratio = min_bond_ratio(atoms)
        if ratio < MIN_BOND_RATIO:
            _scaled(atoms, MIN_BOND_RATIO / ratio * (1.0 + 1e-9))
        atoms.wrap()
        structures.append(atoms)
    return structures
