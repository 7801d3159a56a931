"""The frames of the LMFP dataset: recipe, random configurations, teacher-labelled shards, splits.

Two published models that the ``chgnet`` package ships label the frames (they load offline;
chgnet is imported only while labelling):

* ``high``: CHGNet r2SCAN (``CHGNet.load(model_name="r2scan")``) → energy, forces, stress, magmoms;
* ``low``: CHGNet 0.3.0 (GGA/GGA+U, MPtrj) → energy, forces, stress; magmoms absent (not zero).

Structures are olivine (Pnma) 1x1x2 supercells (56 atoms when fully lithiated) from
:func:`mfwrap.datasets.structures.lifepo4`. Each configuration draws its number of Li atoms
uniformly from 0..8 (Li_x, x = n_Li / 8, removed sites random) and its number of Mn atoms
uniformly from 0..8 (Mn_y Fe_(1-y), sites random), a symmetric strain ε with every component
uniform in ±``max_strain`` (lattice rows L → L (I + ε), fractional coordinates kept), then either

* ``static``: Gaussian displacements of every atom, σ uniform in ``displacement_a`` (Å); or
* ``md``: a short Langevin run (BAOAB, ``timestep_fs``, friction ``friction_per_fs``) at a
  temperature uniform in ``temperature_k``, driven by the *same* teacher that labels the frame,
  from small displacements and Maxwell-Boltzmann velocities; a snapshot every ``md_interval``
  steps, ``md_snapshots`` per trajectory.

Each fidelity is built in ``shards`` pieces (for parallel workers), each from its own random
stream (seed, fidelity, shard), so the two fidelities share no structure. The high-fidelity test
split holds whole groups (one static frame, or all snapshots of one trajectory), so no trajectory
is split between train and test.

Frames are ``ase.Atoms`` with a ``SinglePointCalculator`` holding the labels in ASE units (energy
eV total, forces eV/Å, stress eV/Å^3 with the sign of chgnet's 's' and ASE, i.e.
``stress_GPa * ase.units.GPa``; magmoms μB, absent at ``low``) and ``info`` with ``fidelity``
("high" / "low"), ``kind``, ``group``, ``li_fraction``, ``mn_fraction``, ``strain`` (9 numbers,
row-major ε), and ``temperature_K`` / ``md_step`` (md) or ``displacement_A`` (static).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
from ase import Atoms

from mfwrap.datasets import teachers
from mfwrap.datasets.structures import lifepo4

LOG = logging.getLogger(__name__)
TEACHERS = {"high": "r2scan", "low": "0.3.0"}  # fidelity name -> chgnet pretrained model name
_LABEL_TASK = {"high": "efsm", "low": "efs"}  # chgnet tasks: energy, forces, stress (+ magmoms)
SPLITS = ("high_train", "high_test", "low_train")
_STREAM = {"high": 1, "low": 2, "split": 3}  # independent random streams per seed


@dataclass(frozen=True)
class LMFPRecipe:
    """How many frames of each kind, and how they are perturbed (lengths Å, times fs, K)."""

    n_high: int
    n_high_test: int
    n_low: int
    md_fraction: float = 0.5
    md_snapshots: int = 5
    md_interval: int = 4
    timestep_fs: float = 2.0
    friction_per_fs: float = 0.01
    temperature_k: tuple[float, float] = (300.0, 1000.0)
    max_strain: float = 0.03
    displacement_a: tuple[float, float] = (0.01, 0.06)
    md_start_displacement_a: float = 0.02
    batch_size: int = 1
    shards: int = 2


SIZES = {
    # the seed paper's sizes: 1,911 high (10 % test), 1,736 low
    "full": LMFPRecipe(n_high=1911, n_high_test=191, n_low=1736, shards=4),
    # the demo trains on the 100 high-fidelity training frames (+ all low) and tests on 50
    "small": LMFPRecipe(n_high=150, n_high_test=50, n_low=300, md_fraction=0.3, md_interval=3),
    # for unit tests: a few frames of every kind
    "tiny": LMFPRecipe(n_high=6, n_high_test=2, n_low=6, md_fraction=0.34, md_snapshots=2, md_interval=2, shards=1),
}


@functools.lru_cache(maxsize=1)
def _reference_cell() -> Atoms:
    """Fully lithiated LiFePO4 1x1x2 (56 atoms); callers copy it."""
    structure = lifepo4((1, 1, 2))
    return Atoms(
        numbers=[site.specie.Z for site in structure],
        positions=structure.cart_coords,
        cell=structure.lattice.matrix,
        pbc=True,
    )


def random_configuration(rng: np.random.Generator, recipe: LMFPRecipe, displacement: float) -> Atoms:
    """One Li_x Mn_y Fe_(1-y) PO4 cell: random Li vacancies, Mn/Fe mixing, strain, displacements σ (Å)."""
    atoms = _reference_cell().copy()
    lithium = np.flatnonzero(atoms.numbers == 3)
    metal = np.flatnonzero(atoms.numbers == 26)
    n_li, n_mn = rng.integers(0, len(lithium) + 1), rng.integers(0, len(metal) + 1)
    atoms.numbers[rng.choice(metal, n_mn, replace=False)] = 25
    del atoms[np.setdiff1d(lithium, rng.choice(lithium, n_li, replace=False))]
    strain = rng.uniform(-recipe.max_strain, recipe.max_strain, (3, 3))
    strain = 0.5 * (strain + strain.T)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + strain), scale_atoms=True)
    atoms.positions += rng.normal(0.0, displacement, atoms.positions.shape)
    atoms.info.update(li_fraction=n_li / len(lithium), mn_fraction=n_mn / len(metal), strain=strain.reshape(9))
    return atoms


def shard_sizes(n_frames: int, shards: int) -> list[int]:
    """Frames per shard: as equal as possible, the first ones one larger."""
    return [n_frames // shards + (k < n_frames % shards) for k in range(shards)]


def build_shard(
    fidelity: str, shard: int, recipe: LMFPRecipe, seed: int, device: str = "cpu", threads: int = 1
) -> list[Atoms]:
    """Labelled frames of one shard of one fidelity (its own random stream), each with a ``group``
    id "<shard>-<i>" (one static frame, or all snapshots of one trajectory)."""
    n_frames = shard_sizes(recipe.n_high if fidelity == "high" else recipe.n_low, recipe.shards)[shard]
    with teachers.torch_threads(threads):
        return _build_shard(fidelity, shard, n_frames, recipe, seed, device)


def _build_shard(fidelity: str, shard: int, n_frames: int, recipe: LMFPRecipe, seed: int, device: str) -> list[Atoms]:
    rng = np.random.default_rng([seed, _STREAM[fidelity], shard])
    teacher = teachers.load_teacher(TEACHERS[fidelity], device, recipe.batch_size)
    n_traj = int(round(recipe.md_fraction * n_frames / recipe.md_snapshots))
    n_static = n_frames - n_traj * recipe.md_snapshots
    static = []
    for _ in range(n_static):
        sigma = rng.uniform(*recipe.displacement_a)
        static.append(random_configuration(rng, recipe, sigma))
        static[-1].info.update(kind="static", displacement_A=sigma)
    starts = [random_configuration(rng, recipe, recipe.md_start_displacement_a) for _ in range(n_traj)]
    temperatures = rng.uniform(*recipe.temperature_k, n_traj)
    frames: list[Atoms] = []
    for start in range(0, n_static, 100):  # chunks only to log progress
        chunk = static[start : start + 100]
        frames += map(teachers.store_prediction, chunk, teacher(chunk, _LABEL_TASK[fidelity]))
        LOG.info("%s shard %d: labelled %d / %d static frames", fidelity, shard, len(frames), n_static)
    LOG.info("%s shard %d: %d md trajectories x %d snapshots", fidelity, shard, n_traj, recipe.md_snapshots)
    trajectories = (
        teachers.langevin_snapshots(
            teacher,
            starts,
            temperatures,
            rng,
            timestep_fs=recipe.timestep_fs,
            friction_per_fs=recipe.friction_per_fs,
            interval=recipe.md_interval,
            snapshots=recipe.md_snapshots,
            task=_LABEL_TASK[fidelity],
            log=lambda step, n: LOG.info("%s shard %d: md step %d / %d", fidelity, shard, step, n),
        )
        if n_traj
        else []
    )
    for group, members in enumerate([[a] for a in frames] + trajectories):
        for atoms in members:
            atoms.info.update(fidelity=fidelity, teacher=f"chgnet-{TEACHERS[fidelity]}", group=f"{shard}-{group}")
    return frames + [a for trajectory in trajectories for a in trajectory]


def split_high(frames: list[Atoms], n_test: int, rng: np.random.Generator) -> tuple[list[Atoms], list[Atoms]]:
    """(train, test) with exactly ``n_test`` test frames made of whole groups; both shuffled."""
    groups: dict[str, list[int]] = {}
    for index, atoms in enumerate(frames):
        groups.setdefault(str(atoms.info["group"]), []).append(index)
    test: list[int] = []
    for group in rng.permutation(sorted(groups)):
        if len(test) + len(groups[group]) <= n_test:
            test.extend(groups[group])
    if len(test) != n_test:
        raise ValueError(f"cannot hold out exactly {n_test} frames as whole groups")
    train = sorted(set(range(len(frames))) - set(test))
    return [frames[i] for i in rng.permutation(train)], [frames[i] for i in rng.permutation(test)]


def split_frames(high: list[Atoms], low: list[Atoms], recipe: LMFPRecipe, seed: int) -> dict[str, list[Atoms]]:
    """The :data:`SPLITS` from all frames of each fidelity (whole high-fidelity groups held out for
    test, every split shuffled), from the seed's own random stream."""
    rng = np.random.default_rng([seed, _STREAM["split"]])
    high_train, high_test = split_high(high, recipe.n_high_test, rng)
    return {"high_train": high_train, "high_test": high_test, "low_train": [low[i] for i in rng.permutation(len(low))]}
