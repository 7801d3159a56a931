"""Replay structures: where the structures that the frozen foundation model labels come from.

Sources (:class:`ReplayConfig`, ``sources``), each deterministic under ``seed``:

- ``own``: the user's structures, perturbed (:func:`perturb`): taken in the order of successive
  ``rng.permutation`` of them (each once before any twice), a cell of fewer than :data:`SUPERCELL_BELOW`
  atoms doubled along its shortest cell vector, strained by (I + ε) (ε symmetric, components uniform in
  [-strain, strain]), every position displaced by N(0, rattle²) Å per component; with ``md_steps`` > 0,
  then ``md_steps`` steps of Langevin dynamics with the labelling model itself (time step ``md_timestep``
  fs, ``md_temperature`` K, friction 0.02 fs⁻¹, velocities drawn from Maxwell–Boltzmann at that
  temperature; random numbers from a generator of their own, so the perturbations are those without
  dynamics), so the structures are ones the model's own dynamics visits near the user's.
- ``prototypes``: :func:`mfwrap.datasets.prototypes.prototype_structures` of the ``"replay"`` part
  (never a prototype of the out-of-domain test set), decorated with the union of the user's elements and
  ``DEFAULT_ELEMENTS``, restricted to the elements the model knows (:func:`known_elements`), brought
  near the labelling model's equilibrium volume before strain and rattle.
- a path: the structures of any file :func:`mfwrap.data.readers.read_structures` reads, as they are
  (labels in the file are ignored); min(share, frames) of them, drawn without replacement.

``n`` structures are split evenly across the sources (the first ``n mod k`` sources get one more).
Source ``s`` draws from ``numpy.random.default_rng([seed, crc32(s)])``, so a source's structures do not
depend on which other sources are listed. A structure (from any source) with an element the model does
not know is an error naming the elements and the source; nothing is dropped silently.
"""

from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols
from torch import nn

from mfwrap.data.readers import LabelledStructure, read_structures
from mfwrap.datasets.prototypes import DEFAULT_ELEMENTS, prototype_structures, random_strain
from mfwrap.predict import predict

SOURCE_WORDS = ("own", "prototypes")
SUPERCELL_BELOW = 16  # own cells with fewer atoms are doubled along their shortest cell vector


@dataclass
class ReplayConfig:
    """How a replay set is made (module docstring).

    Attributes:
        sources: each "own", "prototypes" or the path of a structure file.
        n: replay structures in all (> 0), split evenly across the sources.
        rattle: σ of the Gaussian displacements, Å (>= 0).
        strain: bound on each component of the symmetric strain (0 <= strain < 1).
        seed: seeds every source.
        md_steps: Langevin steps with the labelling model after perturbing each ``own`` structure (0: none).
        md_temperature: the temperature of those steps, K (> 0).
        md_timestep: their time step, fs (> 0).
        cache_dir: cache root; None = ``$MFWRAP_CACHE`` or ``~/.cache/mfwrap`` (see :mod:`mfwrap.replay.cache`).
    """

    sources: list[str] = field(default_factory=lambda: ["own", "prototypes"])
    n: int = 500
    rattle: float = 0.05
    strain: float = 0.02
    seed: int = 0
    cache_dir: str | None = None
    md_steps: int = 0
    md_temperature: float = 600.0
    md_timestep: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.sources, str) or not self.sources:
            raise ValueError(f"replay sources must be a non-empty list, got {self.sources!r}")
        self.sources = [str(s) for s in self.sources]
        for source in self.sources:
            if source not in SOURCE_WORDS and not Path(source).is_file():
                raise ValueError(
                    f"replay source {source!r} is neither one of {list(SOURCE_WORDS)} nor an existing file"
                )
        if len(set(self.sources)) != len(self.sources):
            raise ValueError(f"replay sources {self.sources} name a source twice")
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"replay n must be a positive integer, got {self.n!r}")
        if self.rattle < 0:
            raise ValueError(f"replay rattle must be >= 0 Å, got {self.rattle}")
        if not 0 <= self.strain < 1:
            raise ValueError(f"replay strain must be in [0, 1), got {self.strain}")
        if not isinstance(self.md_steps, int) or self.md_steps < 0:
            raise ValueError(f"replay md_steps must be a non-negative integer, got {self.md_steps!r}")
        if self.md_temperature <= 0 or self.md_timestep <= 0:
            raise ValueError(
                f"replay md_temperature (K) and md_timestep (fs) must be > 0, got {self.md_temperature}, "
                f"{self.md_timestep}"
            )

    def shares(self) -> dict[str, int]:
        """Structures asked of each source: n split evenly, the first n mod k sources one more."""
        k = len(self.sources)
        return {s: self.n // k + (i < self.n % k) for i, s in enumerate(self.sources)}


def known_elements(model: nn.Module) -> set[int] | None:
    """Atomic numbers a foundation model knows, or None when it cannot tell (then nothing is checked).

    In order: ``supported_numbers`` of the model, or of the backbone a :class:`mfwrap.MultiFidelity`
    wraps; else the elements with a non-zero per-element energy in the backbone's composition module
    (named by its fidelity spec, :func:`mfwrap.surgery.resolve_spec`; for a composition that mechanism C
    replaced, the backbone's original table); else None.
    """
    from mfwrap.mechanisms.composition import read_element_energies
    from mfwrap.surgery import resolve_spec

    backbone = model.backbone if isinstance(getattr(model, "backbone", None), nn.Module) else model
    for owner in (model, backbone):
        supported = getattr(owner, "supported_numbers", None)
        if supported is not None:
            return {int(z) for z in supported}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a heuristic guess at the spec is worth trying, not worth a warning
        path = resolve_spec(backbone, None)[0].composition
    if path is None:
        return None
    module = backbone.get_submodule(path)
    initial = getattr(module, "initial", None)  # mechanism C keeps the table it replaced, index Z
    try:
        table = initial if initial is not None and initial.dim() == 1 else read_element_energies(module)
    except TypeError:
        return None
    known = {int(z) for z in table.nonzero().flatten().tolist() if z > 0}
    return known or None


def check_elements(structures: Sequence[Atoms], known: set[int] | None, source: str, model: nn.Module) -> None:
    """ValueError naming the elements of ``structures`` that are not in ``known`` (None: no check)."""
    if known is None or not structures:
        return
    present = set(np.unique(np.concatenate([a.numbers for a in structures])).tolist())
    unknown = sorted(present - known)
    if unknown:
        names = ", ".join(chemical_symbols[z] for z in unknown)
        raise ValueError(
            f"replay source {source!r}: element(s) {names} unknown to the foundation model "
            f"({type(model).__name__}); remove those structures from the source or replay from other sources"
        )


def as_atoms(structure: Any) -> Atoms:
    """A bare copy (numbers, positions, cell, pbc; no labels) of an ``ase.Atoms`` or a LabelledStructure."""
    atoms = structure.atoms if isinstance(structure, LabelledStructure) else structure
    if not isinstance(atoms, Atoms):
        raise TypeError(f"replay structures must be ase.Atoms or LabelledStructure, got {type(structure).__name__}")
    return Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)


def perturb(atoms: Atoms, rng: np.random.Generator, rattle: float, strain: float) -> Atoms:
    """``atoms`` (a bare copy) doubled along its shortest cell vector if periodic with fewer than
    :data:`SUPERCELL_BELOW` atoms, strained by :func:`~mfwrap.datasets.prototypes.random_strain` if
    periodic, rattled by N(0, rattle²) Å per component."""
    atoms = as_atoms(atoms)
    if atoms.pbc.all():
        if len(atoms) < SUPERCELL_BELOW:
            repeat = np.ones(3, dtype=int)
            repeat[np.argmin(atoms.cell.lengths())] = 2
            atoms = atoms.repeat(repeat)
        atoms.set_cell(atoms.cell.array @ random_strain(rng, strain), scale_atoms=True)
    atoms.positions = atoms.positions + rng.normal(0.0, rattle, atoms.positions.shape)
    return atoms


def source_rng(seed: int, source: str) -> np.random.Generator:
    """The generator of one source: ``default_rng([seed, crc32(source)])``."""
    return np.random.default_rng([seed, zlib.crc32(source.encode("utf-8"))])


def own_structures(
    own: Sequence[Atoms],
    count: int,
    rng: np.random.Generator,
    config: ReplayConfig,
    model: nn.Module | None = None,
    fidelity: str | None = None,
) -> list[Atoms]:
    """``count`` perturbed copies of the user's structures (module docstring), moved by ``config.md_steps``
    Langevin steps of ``model`` at ``fidelity`` where asked."""
    if not own:
        raise ValueError("replay source 'own' needs the user's structures; none were given")
    if config.md_steps and model is None:
        raise ValueError("replay md_steps needs the labelling model to run the dynamics")
    order = np.concatenate([rng.permutation(len(own)) for _ in range(-(-count // len(own)))])[:count]
    dynamics_rng = source_rng(config.seed, "own dynamics")  # the perturbations are those without dynamics
    structures = []
    for index in order:
        atoms = perturb(own[index], rng, config.rattle, config.strain)
        if config.md_steps:
            atoms = langevin(atoms, model, fidelity, dynamics_rng, config)
        atoms.info.update(source="own", index=int(index))
        structures.append(atoms)
    return structures


def langevin(
    atoms: Atoms, model: nn.Module, fidelity: str | None, rng: np.random.Generator, config: ReplayConfig
) -> Atoms:
    """``atoms`` after ``config.md_steps`` Langevin steps with ``model`` (module docstring); a copy, bare."""
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    from mfwrap.calculator import Calculator

    moved = atoms.copy()
    moved.calc = Calculator(model, fidelity=fidelity, verbose=False)
    MaxwellBoltzmannDistribution(moved, temperature_K=config.md_temperature, rng=rng)
    dynamics = Langevin(
        moved, config.md_timestep * units.fs, temperature_K=config.md_temperature, friction=0.02 / units.fs, rng=rng
    )
    dynamics.run(config.md_steps)
    moved.calc = None
    moved.set_velocities(np.zeros_like(moved.positions))  # a structure to label, not a state to continue
    return moved


def file_structures(path: str, count: int, rng: np.random.Generator) -> list[Atoms]:
    """min(count, frames) structures of the file ``path``, drawn without replacement, bare."""
    if not Path(path).is_file():
        raise ValueError(f"replay source {path!r}: no such file; give an existing structure file, own or prototypes")
    frames = read_structures(path)
    picks = rng.choice(len(frames), size=min(count, len(frames)), replace=False)
    structures = []
    for index in picks:
        atoms = as_atoms(frames[index])
        atoms.info.update(source=str(path), index=int(index))
        structures.append(atoms)
    return structures


def model_pressure(
    model: nn.Module, fidelity: str | None = None, batch_size: int = 8
) -> Callable[[list[Atoms]], np.ndarray]:
    """``structures -> pressures`` (GPa, -tr σ / 3, positive = compressed) of ``model`` at ``fidelity``."""

    def pressure(structures: list[Atoms]) -> np.ndarray:
        out = predict(model, structures, fidelity, batch_size, forces=False)
        return np.array([-np.trace(o["stress"]) / 3.0 for o in out])

    return pressure


def replay_structures(
    model: nn.Module,
    config: ReplayConfig,
    own: Sequence[Any] = (),
    *,
    fidelity: str | None = None,
    batch_size: int = 8,
) -> dict[str, list[Atoms]]:
    """The replay structures of every source of ``config``, checked against :func:`known_elements`
    of ``model``; ``own``: the user's structures (ase.Atoms or LabelledStructure). Prototypes are
    brought near the equilibrium volume of ``model`` at ``fidelity`` (:func:`model_pressure`)."""
    own = [as_atoms(s) for s in own]
    known = known_elements(model)
    made = {}
    for source, count in config.shares().items():
        rng = source_rng(config.seed, source)
        if source == "own":
            structures = own_structures(own, count, rng, config, model, fidelity)
        elif source == "prototypes":
            elements = set(DEFAULT_ELEMENTS).union(*(a.numbers.tolist() for a in own))
            elements = sorted(elements if known is None else elements & known)
            seed = int(rng.integers(2**31))
            structures = prototype_structures(
                count,
                elements=elements,
                seed=seed,
                part="replay",
                rattle=config.rattle,
                strain=config.strain,
                pressure=model_pressure(model, fidelity, batch_size),
            )
        else:
            structures = file_structures(source, count, rng)
        check_elements(structures, known, source, model)
        made[source] = structures
    return made
