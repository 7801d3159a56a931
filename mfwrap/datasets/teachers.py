"""Pretrained CHGNet models as labellers, and short Langevin MD driven by them.

Used to synthesise datasets (see :mod:`mfwrap.datasets.lmfp`). ``chgnet`` is imported only when
a teacher is loaded, never when mfwrap is imported.
"""

from __future__ import annotations

import contextlib
import functools
import io
import warnings
from typing import Callable, Iterator

import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator
from pymatgen.core import Lattice, Structure

Prediction = dict[str, np.ndarray]


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run with ``threads`` torch intra-op threads, then restore the previous number.

    One thread is the fastest for a 56-atom cell on a 2-core machine (two are slower, and much
    slower when the cores are shared).
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class CHGNetTeacher:
    """A pretrained CHGNet (``model_name`` "0.3.0", "0.2.0" or "r2scan") as a labeller.

    ``teacher(frames, task)`` returns chgnet's prediction dict per frame: "e" eV/atom, "f" (n, 3)
    eV/Å, "s" (3, 3) GPa, "m" (n,) μB, for the letters in ``task`` ("ef", "efs", "efsm", ...).
    """

    def __init__(self, model_name: str, device: str = "cpu", batch_size: int = 1) -> None:
        from chgnet.model import CHGNet  # a teacher: never imported by mfwrap at import time

        with contextlib.redirect_stdout(io.StringIO()):
            self.model = CHGNet.load(model_name=model_name, use_device=device, verbose=False)
        self.batch_size = batch_size

    def __call__(self, frames: list[Atoms], task: str) -> list[Prediction]:
        structures = [
            Structure(Lattice(a.cell.array), a.numbers, a.positions, coords_are_cartesian=True) for a in frames
        ]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # chgnet's own tensor-to-scalar warning
            out = self.model.predict_structure(structures, task=task, batch_size=self.batch_size)
        return [out] if isinstance(out, dict) else out


@functools.lru_cache(maxsize=2)
def load_teacher(model_name: str, device: str = "cpu", batch_size: int = 1) -> CHGNetTeacher:
    """One loaded teacher per process and model."""
    return CHGNetTeacher(model_name, device, batch_size)


def store_prediction(atoms: Atoms, prediction: Prediction) -> Atoms:
    """Attach ``prediction`` to ``atoms`` as a SinglePointCalculator, in ASE units.

    energy = e · n (chgnet's e is per atom), eV; forces eV/Å; stress = (s + sᵀ)/2 · ase.units.GPa,
    eV/Å^3, same sign as chgnet and ASE; magmoms μB only if predicted.
    """
    stress = np.asarray(prediction["s"], dtype=np.float64)
    results = {
        "energy": float(prediction["e"]) * len(atoms),
        "forces": np.asarray(prediction["f"], dtype=np.float64),
        "stress": 0.5 * (stress + stress.T) * units.GPa,
    }
    if "m" in prediction:
        results["magmoms"] = np.asarray(prediction["m"], dtype=np.float64).reshape(len(atoms))
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def langevin_snapshots(
    teacher: Callable[[list[Atoms], str], list[Prediction]],
    starts: list[Atoms],
    temperatures: np.ndarray,
    rng: np.random.Generator,
    *,
    timestep_fs: float,
    friction_per_fs: float,
    interval: int,
    snapshots: int,
    task: str,
    log: Callable[[int, int], None] | None = None,
) -> list[list[Atoms]]:
    """Langevin MD of every start at its temperature (K), in lock-step: one teacher call per step.

    BAOAB splitting with c = exp(-γ Δt): v += Δt/2 F/m; r += Δt/2 v; v ← c v + sqrt(1 - c²)
    sqrt(k_B T / m) ξ; r += Δt/2 v; F ← teacher(r); v += Δt/2 F/m. Velocities start from
    Maxwell-Boltzmann at T. Every ``interval`` steps each trajectory yields a wrapped snapshot
    labelled with the teacher's evaluation of that step (``task``, so no extra call), with
    ``info`` kind="md", temperature_K, md_step. Returns ``snapshots`` frames per start.
    """
    dt = timestep_fs * units.fs
    damping = np.exp(-friction_per_fs * timestep_fs)
    frames = [a.copy() for a in starts]
    inv_mass = [1.0 / a.get_masses()[:, None] for a in frames]
    thermal = [np.sqrt(units.kB * t * m) for t, m in zip(temperatures, inv_mass)]
    velocities = [s * rng.standard_normal(a.positions.shape) for s, a in zip(thermal, frames)]
    forces = [p["f"] for p in teacher(frames, "ef")]
    trajectories: list[list[Atoms]] = [[] for _ in frames]
    n_steps = interval * snapshots
    for step in range(1, n_steps + 1):
        for atoms, v, f, m, s in zip(frames, velocities, forces, inv_mass, thermal):
            v += 0.5 * dt * f * m
            atoms.positions += 0.5 * dt * v
            v *= damping
            v += np.sqrt(1.0 - damping**2) * s * rng.standard_normal(v.shape)
            atoms.positions += 0.5 * dt * v
        sample = step % interval == 0
        predictions = teacher(frames, task if sample else "ef")
        forces = [p["f"] for p in predictions]
        for v, f, m in zip(velocities, forces, inv_mass):
            v += 0.5 * dt * f * m
        if sample:
            for trajectory, atoms, prediction, temperature in zip(trajectories, frames, predictions, temperatures):
                snapshot = atoms.copy()
                snapshot.wrap()
                snapshot.info.update(kind="md", temperature_K=float(temperature), md_step=step)
                trajectory.append(store_prediction(snapshot, prediction))
        if log is not None:
            log(step, n_steps)
    return trajectories
