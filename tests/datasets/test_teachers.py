"""Teacher-driven sampling: the Langevin integrator against analytic results, and label storage."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms, units

from mfwrap.datasets import teachers


def harmonic_teacher(k: float, reference: np.ndarray):
    """A stand-in for CHGNet: E = k/2 Σ|r - r0|², F = -k (r - r0), zero stress (eV, Å)."""

    def teacher(frames, task):
        out = []
        for atoms in frames:
            d = atoms.positions - reference
            prediction = {"e": np.array(0.5 * k * (d**2).sum() / len(atoms)), "f": -k * d}
            if "s" in task:
                prediction["s"] = np.zeros((3, 3))
            out.append(prediction)
        return out

    return teacher


def test_without_friction_or_temperature_it_is_the_harmonic_oscillator():
    k, displacement = 5.0, 0.1  # eV/Å², Å
    atom = Atoms("O", positions=[[5.0, 5.0, 5.0]], cell=np.eye(3) * 10.0, pbc=True)
    start = atom.copy()
    start.positions += [displacement, 0.0, 0.0]
    (trajectory,) = teachers.langevin_snapshots(
        harmonic_teacher(k, atom.positions),
        [start],
        np.array([0.0]),
        np.random.default_rng(0),
        timestep_fs=0.5,
        friction_per_fs=0.0,
        interval=4,
        snapshots=10,
        task="efs",
    )
    omega = np.sqrt(k / atom.get_masses()[0])  # 1 / ASE time unit
    times = np.array([a.info["md_step"] for a in trajectory]) * 0.5 * units.fs
    x = np.array([a.positions[0, 0] - 5.0 for a in trajectory])
    np.testing.assert_allclose(x, displacement * np.cos(omega * times), atol=2e-3 * displacement)
    forces = np.array([a.calc.results["forces"][0, 0] for a in trajectory])
    np.testing.assert_allclose(forces, -k * x, rtol=1e-12)


def test_velocities_start_and_stay_maxwell_boltzmann_at_the_temperature():
    n, temperature, timestep_fs, friction = 3000, 800.0, 1.0, 0.2
    atoms = Atoms(f"Ar{n}", positions=np.zeros((n, 3)) + 50.0, cell=np.eye(3) * 100.0, pbc=True)
    (trajectory,) = teachers.langevin_snapshots(
        harmonic_teacher(0.0, atoms.positions),
        [atoms],
        np.array([temperature]),
        np.random.default_rng(1),
        timestep_fs=timestep_fs,
        friction_per_fs=friction,
        interval=1,
        snapshots=30,
        task="efs",
    )
    # a force-free BAOAB step keeps v ~ N(0, σ²), σ² = k_B T / m, and moves the atoms by
    # Δr = Δt/2 (v + c v + sqrt(1 - c²) σ ξ), so Var Δr = Δt²/4 σ² (2 + 2c), at every step
    c = np.exp(-friction * timestep_fs)
    dt = timestep_fs * units.fs
    expected = dt**2 / 4 * units.kB * temperature / atoms.get_masses()[0] * (2 + 2 * c)
    first_step = trajectory[0].positions - atoms.positions
    last_step = trajectory[-1].positions - trajectory[-2].positions
    assert first_step.var() == pytest.approx(expected, rel=0.1)
    assert last_step.var() == pytest.approx(expected, rel=0.1)
    assert trajectory[0].info["temperature_K"] == temperature


def test_store_prediction_converts_to_ase_units():
    atoms = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]], cell=np.eye(3) * 6, pbc=True)
    stress_gpa = np.array([[1.0, 0.2, 0.0], [0.4, 2.0, 0.0], [0.0, 0.0, 3.0]])
    prediction = {"e": np.float32(-3.5), "f": np.ones((2, 3)), "s": stress_gpa}
    teachers.store_prediction(atoms, prediction)
    assert atoms.get_potential_energy() == pytest.approx(-7.0)  # e is per atom
    np.testing.assert_allclose(atoms.get_stress(voigt=False) / units.GPa, [[1, 0.3, 0], [0.3, 2, 0], [0, 0, 3]])
    assert "magmoms" not in atoms.calc.results
    teachers.store_prediction(atoms, {**prediction, "m": np.array([0.1, 0.2])})
    np.testing.assert_allclose(atoms.calc.results["magmoms"], [0.1, 0.2])
