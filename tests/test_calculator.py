"""mfwrap.Calculator: ASE units and signs, an optimiser and a few MD steps."""

from __future__ import annotations

import numpy as np
import pytest
from ase import units
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS

import mfwrap
from mf_models import perturb, random_crystal, small_backbone
from mfwrap import MultiFidelity


def _model(name="schnet"):
    mf = MultiFidelity(small_backbone(name), ["pbe", "r2scan"], "ECMR").double()
    perturb(mf, "ECMR")
    return mf


def test_matches_predict_and_stress_is_the_strain_derivative_in_ase_units():
    mf = _model()
    atoms = random_crystal(np.random.default_rng(0))
    atoms.calc = mfwrap.Calculator(mf, fidelity="r2scan")
    reference = mfwrap.predict(mf, atoms, fidelity="r2scan")[0]
    assert atoms.get_potential_energy() == pytest.approx(reference["energy"], abs=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), reference["forces"], atol=1e-10)
    stress = atoms.get_stress(voigt=False)
    # ASE: σ = (1/V) ∂E/∂ε; central differences on a symmetric strain of each component.
    volume, cell, frac, h = atoms.get_volume(), atoms.cell.array.copy(), atoms.get_scaled_positions(), 1e-5
    for i, j in [(0, 0), (1, 2), (2, 1), (0, 2)]:
        energies = []
        for sign in (1, -1):
            strain = np.eye(3)
            strain[i, j] += sign * h / 2
            strain[j, i] += sign * h / 2
            strained = atoms.copy()
            strained.set_cell(cell @ strain, scale_atoms=False)
            strained.set_scaled_positions(frac)
            strained.calc = mfwrap.Calculator(mf, fidelity="r2scan")
            energies.append(strained.get_potential_energy())
        assert stress[i, j] == pytest.approx((energies[0] - energies[1]) / (2 * h) / volume, rel=1e-5, abs=1e-8)
    assert atoms.calc.get_property("stress").shape == (6,)


def test_fidelity_is_required_and_changes_the_result():
    mf = _model()
    with pytest.raises(ValueError, match="name one"):
        mfwrap.Calculator(mf)
    atoms = random_crystal(np.random.default_rng(1))
    energies = []
    for fidelity in ("pbe", "r2scan"):
        atoms.calc = mfwrap.Calculator(mf, fidelity=fidelity)
        energies.append(atoms.get_potential_energy())
    assert abs(energies[0] - energies[1]) > 1e-3


def test_optimiser_lowers_the_energy_and_md_conserves_it():
    mf = _model()
    atoms = random_crystal(np.random.default_rng(2), max_atoms=4)
    atoms.calc = mfwrap.Calculator(mf, fidelity="pbe")
    start = atoms.get_potential_energy()
    BFGS(atoms, logfile=None).run(fmax=0.05, steps=15)
    assert atoms.get_potential_energy() < start
    atoms.rattle(0.05, seed=0)
    atoms.set_momenta(np.zeros((len(atoms), 3)))
    total = atoms.get_potential_energy()
    dynamics = VelocityVerlet(atoms, timestep=0.5 * units.fs, logfile=None)
    dynamics.run(5)
    assert atoms.get_potential_energy() + atoms.get_kinetic_energy() == pytest.approx(total, abs=1e-3)


def test_magmoms_of_a_backbone_with_a_magmom_head():
    atoms = random_crystal(np.random.default_rng(3))
    atoms.calc = mfwrap.Calculator(_model("chgnet"), fidelity="pbe")
    magmoms = atoms.get_magnetic_moments()
    assert magmoms.shape == (len(atoms),) and (magmoms >= 0).all()
