"""mfwrap.Calculator: ASE units and signs, derivatives of its own energy, magmoms per fidelity,
an optimiser, and energy conservation in NVE molecular dynamics."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from ase import units
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS

import mfwrap
from mf_models import perturb, random_crystal, small_backbone
from mfwrap import MultiFidelity

sys.path.insert(0, str(Path(__file__).parent / "train"))
from tiny_backbone import TinyBackbone  # noqa: E402

FIDELITIES = ["pbe", "r2scan"]


def _model(name="schnet", mechanisms="ECMR"):
    backbone = TinyBackbone(seed=0) if name == "tiny" else small_backbone(name)
    mf = MultiFidelity(backbone, FIDELITIES, mechanisms).double()
    perturb(mf, mechanisms)
    return mf


def _energy(atoms, calc) -> float:
    atoms = atoms.copy()
    atoms.calc = calc
    return atoms.get_potential_energy()


def test_forces_are_minus_the_gradient_of_the_calculator_energy():
    """Central differences of the calculator's own energy, every component, at both fidelities."""
    mf = _model()
    atoms = random_crystal(np.random.default_rng(0))
    h = 1e-5
    for fidelity in FIDELITIES:
        calc = mfwrap.Calculator(mf, fidelity=fidelity)
        atoms.calc = calc
        forces = atoms.get_forces()
        expected = np.zeros_like(forces)
        for a in range(len(atoms)):
            for k in range(3):
                energies = []
                for sign in (1, -1):
                    displaced = atoms.copy()
                    displaced.positions[a, k] += sign * h
                    energies.append(_energy(displaced, calc))
                expected[a, k] = -(energies[0] - energies[1]) / (2 * h)
        assert np.abs(forces).max() > 0.1  # not a trivially flat point
        np.testing.assert_allclose(forces, expected, rtol=1e-5, atol=1e-6)
        # predict is the same physics on another path (batching, no ASE): equal, not just close
        reference = mfwrap.predict(mf, atoms, fidelity=fidelity)[0]
        assert atoms.get_potential_energy() == pytest.approx(reference["energy"], abs=1e-10)
        np.testing.assert_allclose(forces, reference["forces"], atol=1e-10)


def test_stress_is_the_strain_derivative_in_ase_units():
    """ASE: σ_ij = (1/V) ∂E/∂ε_ij in eV/Å^3 (Voigt xx yy zz yz xz xy); all nine components by
    central differences of a symmetric strain; equals predict's GPa stress / 160.2."""
    mf = _model()
    atoms = random_crystal(np.random.default_rng(0))
    calc = mfwrap.Calculator(mf, fidelity="r2scan")
    atoms.calc = calc
    stress = atoms.get_stress(voigt=False)
    volume, cell, frac, h = atoms.get_volume(), atoms.cell.array.copy(), atoms.get_scaled_positions(), 1e-5
    expected = np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            energies = []
            for sign in (1, -1):
                strain = np.eye(3)
                strain[i, j] += sign * h / 2
                strain[j, i] += sign * h / 2
                strained = atoms.copy()
                strained.set_cell(cell @ strain, scale_atoms=False)
                strained.set_scaled_positions(frac)
                energies.append(_energy(strained, calc))
            expected[i, j] = (energies[0] - energies[1]) / (2 * h) / volume
    assert np.abs(expected).max() > 1e-3  # a stressed cell, so a sign or unit error shows
    np.testing.assert_allclose(stress, expected, rtol=1e-5, atol=1e-8)
    voigt = atoms.get_stress()
    assert voigt.shape == (6,)
    np.testing.assert_allclose(
        voigt,
        [expected[0, 0], expected[1, 1], expected[2, 2], expected[1, 2], expected[0, 2], expected[0, 1]],
        rtol=1e-5,
        atol=1e-8,
    )
    reference = mfwrap.predict(mf, atoms, fidelity="r2scan")[0]["stress"]
    np.testing.assert_allclose(stress * 160.21766208, reference, rtol=1e-9, atol=1e-9)


def test_fidelity_is_required_said_and_changes_the_result(capsys):
    mf = _model()
    with pytest.raises(ValueError, match="choose one with fidelity="):
        mfwrap.Calculator(mf)
    mfwrap.Calculator(mf, fidelity="r2scan")
    assert "MultiFidelity at fidelity 'r2scan' of ['pbe', 'r2scan']" in capsys.readouterr().err
    mfwrap.Calculator(mf, fidelity="r2scan", verbose=False)
    assert capsys.readouterr().err == ""
    atoms = random_crystal(np.random.default_rng(1))
    energies = []
    for fidelity in FIDELITIES:
        atoms.calc = mfwrap.Calculator(mf, fidelity=fidelity)
        energies.append(atoms.get_potential_energy())
    assert abs(energies[0] - energies[1]) > 1e-3


@pytest.mark.parametrize(
    "name, mechanisms, differ",
    [
        ("tiny", "R", True),  # TinyBackbone lists its magmom head as a readout: R gives one per fidelity
        ("chgnet", "R", False),  # CHGNet's magmom head is shared (a "heads" entry), R copies only the readout
        ("chgnet", "E", True),  # ... but the atom features it reads depend on the fidelity through E
    ],
)
def test_magmoms_equal_predict_at_each_fidelity(name, mechanisms, differ):
    mf = _model(name, mechanisms)
    atoms = random_crystal(np.random.default_rng(3))
    magmoms, energies = {}, {}
    for fidelity in FIDELITIES:
        atoms.calc = mfwrap.Calculator(mf, fidelity=fidelity)
        magmoms[fidelity] = atoms.get_magnetic_moments()
        energies[fidelity] = atoms.get_potential_energy()
        reference = mfwrap.predict(mf, atoms, fidelity=fidelity)[0]
        assert magmoms[fidelity].shape == (len(atoms),) and (magmoms[fidelity] >= 0).all()
        np.testing.assert_allclose(magmoms[fidelity], reference["magmoms"], rtol=1e-10, atol=1e-12)
    assert abs(energies["pbe"] - energies["r2scan"]) > 1e-3  # the perturbed mechanism is active
    difference = np.abs(magmoms["pbe"] - magmoms["r2scan"]).max()
    if differ:
        assert difference > 1e-3 * max(np.abs(magmoms["pbe"]).max(), 1e-3)
    else:
        assert difference < 1e-12


def test_optimiser_lowers_the_energy():
    mf = _model()
    atoms = random_crystal(np.random.default_rng(2), max_atoms=4)
    atoms.calc = mfwrap.Calculator(mf, fidelity="pbe")
    start, start_fmax = atoms.get_potential_energy(), np.linalg.norm(atoms.get_forces(), axis=1).max()
    BFGS(atoms, logfile=None).run(fmax=0.05, steps=15)
    assert atoms.get_potential_energy() < start - 1e-2
    assert np.linalg.norm(atoms.get_forces(), axis=1).max() < 0.5 * start_fmax


def test_md_conserves_the_total_energy_while_kinetic_and_potential_energy_exchange():
    """NVE velocity Verlet, 200 steps of 1 fs from a rattled cell at rest: the kinetic energy rises
    to ≳ 0.5 eV and the total energy stays within 1 % of it (measured: 0.03 %). Forces of the wrong
    sign (drift = 2 × kinetic), scaled, or unrelated to the energy would break this."""
    mf = _model()
    atoms = random_crystal(np.random.default_rng(0), max_atoms=4)
    atoms.calc = mfwrap.Calculator(mf, fidelity="pbe")
    atoms.rattle(0.1, seed=0)
    atoms.set_momenta(np.zeros((len(atoms), 3)))
    total, kinetic = [], []

    def record():
        kinetic.append(atoms.get_kinetic_energy())
        total.append(atoms.get_potential_energy() + kinetic[-1])

    dynamics = VelocityVerlet(atoms, timestep=1.0 * units.fs, logfile=None)
    dynamics.attach(record, interval=1)
    dynamics.run(200)
    total, kinetic = np.array(total), np.array(kinetic)
    assert len(total) == 201 and kinetic[0] == 0.0
    exchanged = kinetic.max()
    assert exchanged > 0.1  # the potential energy really turned into motion
    assert np.abs(total - total[0]).max() < 0.01 * exchanged


def test_the_calculator_leaves_the_model_in_its_mode():
    model = small_backbone("chgnet")
    model.train()
    atoms = random_crystal(np.random.default_rng(0), 3)
    atoms.calc = mfwrap.Calculator(model)
    atoms.get_potential_energy()
    assert model.training
