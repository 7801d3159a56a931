"""Physics of wrapped models (hypothesis, float64): MultiFidelity(ECMR) around each shipped backbone.

The fidelity parameters are perturbed away from their (identity) initial values, and every
structure is evaluated in a batch that also holds a structure of the other fidelity, so the
mixed-fidelity paths of all four mechanisms run. Checked at both fidelities: forces = −∇E (a
central difference along a random direction checks every component with two energies), stress =
strain derivative (all nine components), energy invariant and forces, stress and magmoms covariant
under rotation, translation and permutation, supercell extensivity, continuity as a periodic
image crosses each cutoff, and NaN / absent stress for molecules.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import mfwrap
from mf_models import (
    assert_invariant_energy_covariant_forces,
    batch_of,
    deformed,
    perturb,
    random_crystal,
    rigidly_moved,
    small_backbone,
    strain,
)
from mfwrap import MultiFidelity
from mfwrap.data import keys as K
from mfwrap.data.graph import EV_PER_A3_TO_GPA
from mfwrap.physics import energy_and_derivatives

pytestmark = pytest.mark.filterwarnings("ignore:.*no neighbour within")

MODELS = ("chgnet", "schnet", "dimenet", "chgnet+residual")  # +residual: R as a shared readout plus residuals
FIDELITIES = ("low", "high")


def for_every_model(**strategies):
    """A hypothesis test (25 examples) per wrapped model, drawing a seed, a fidelity and ``strategies``."""

    def decorate(test):
        examples = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        drawn = given(seed=st.integers(0, 2**32 - 1), fidelity=st.integers(0, 1), **strategies)
        return pytest.mark.parametrize("name", MODELS)(examples(drawn(test)))

    return decorate


@functools.lru_cache(maxsize=None)
def wrapped(name: str) -> MultiFidelity:
    backbone, _, readout = name.partition("+")
    model = MultiFidelity(small_backbone(backbone).double(), list(FIDELITIES), "ECMR", readout=readout or "copies")
    perturb(model, "ECMR", seed=7)
    return model.eval()


def run(model, structures, fidelities, forces=True, stress=True) -> list[dict[str, np.ndarray]]:
    """Per-structure outputs of one batch of ``structures`` at ``fidelities`` (float64)."""
    batch = batch_of(structures, model.graph_spec, fidelities, dtype=torch.float64)
    out = energy_and_derivatives(model, batch, forces=forces, stress=stress)
    sizes = [len(s) for s in structures]
    results = [{K.ENERGY: float(e)} for e in out[K.ENERGY].detach()]
    for key in (K.FORCES, K.MAGMOMS):
        if key in out:
            for result, part in zip(results, out[key].detach().split(sizes)):
                result[key] = part.numpy()
    if stress:
        for result, sigma in zip(results, out[K.STRESS].detach()):
            result[K.STRESS] = sigma.numpy()
    return results


def _case(seed: int, fidelity: int, max_atoms: int = 5) -> tuple[Atoms, Atoms, list[int]]:
    """A crystal, a decoy crystal, and fidelities [f, other f] to evaluate them at in one batch."""
    rng = np.random.default_rng(seed)
    return random_crystal(rng, max_atoms), random_crystal(rng, 4), [fidelity, 1 - fidelity]


@for_every_model()
def test_forces_are_minus_energy_gradient(name, seed, fidelity):
    model, h = wrapped(name), 1e-4
    atoms, decoy, (f, g) = _case(seed, fidelity)
    direction = np.random.default_rng(seed + 1).normal(size=(len(atoms), 3))
    direction /= np.linalg.norm(direction)
    plus, minus = atoms.copy(), atoms.copy()
    plus.positions += h * direction
    minus.positions -= h * direction
    reference = run(model, [decoy, atoms], [g, f], stress=False)[1]
    e_plus, e_minus, _ = run(model, [plus, minus, decoy], [f, f, g], forces=False, stress=False)
    slope = (e_plus[K.ENERGY] - e_minus[K.ENERGY]) / (2 * h)
    assert slope == pytest.approx(-(reference[K.FORCES] * direction).sum(), rel=1e-5, abs=1e-6)


@for_every_model()
def test_stress_is_strain_derivative(name, seed, fidelity):
    model, h = wrapped(name), 1e-5
    atoms, decoy, (f, g) = _case(seed, fidelity)
    stress = run(model, [atoms, decoy], [f, g], forces=False)[0][K.STRESS]
    strained = [deformed(atoms, strain(a, b, sign * h)) for a in range(3) for b in range(3) for sign in (1, -1)]
    energies = np.array(
        [r[K.ENERGY] for r in run(model, strained + [decoy], [f] * 18 + [g], forces=False, stress=False)]
    )
    expected = (energies[0:18:2] - energies[1:18:2]).reshape(3, 3) / (2 * h) / atoms.get_volume() * EV_PER_A3_TO_GPA
    np.testing.assert_allclose(stress, expected, rtol=1e-5, atol=1e-5)


@for_every_model()
def test_invariance_and_covariance(name, seed, fidelity):
    model = wrapped(name)
    atoms, decoy, (f, g) = _case(seed, fidelity)
    moved, matrix, order = rigidly_moved(atoms, seed + 2)
    base, rot, trans, perm, _ = run(model, [atoms, *moved, decoy], [f, f, f, f, g])
    assert_invariant_energy_covariant_forces(base, [rot, trans, perm], matrix, order)
    scale = max(1.0, abs(base[K.ENERGY]))
    np.testing.assert_allclose(rot[K.STRESS], matrix @ base[K.STRESS] @ matrix.T, atol=1e-7 * scale)
    np.testing.assert_allclose(trans[K.STRESS], base[K.STRESS], atol=1e-7 * scale)
    if K.MAGMOMS in base:
        np.testing.assert_allclose(rot[K.MAGMOMS], base[K.MAGMOMS], atol=1e-10)
        np.testing.assert_allclose(perm[K.MAGMOMS], base[K.MAGMOMS][order], atol=1e-10)


@for_every_model(repeats=st.tuples(*[st.integers(1, 2)] * 3).filter(lambda r: r != (1, 1, 1)))
def test_supercell_is_extensive(name, seed, fidelity, repeats):
    model = wrapped(name)
    atoms, decoy, (f, g) = _case(seed, fidelity, max_atoms=3)
    cell, supercell, _ = run(model, [atoms, atoms.repeat(repeats), decoy], [f, f, g])
    n = int(np.prod(repeats))
    assert supercell[K.ENERGY] == pytest.approx(n * cell[K.ENERGY], rel=1e-10, abs=1e-9)
    np.testing.assert_allclose(supercell[K.FORCES], np.tile(cell[K.FORCES], (n, 1)), atol=1e-8)
    np.testing.assert_allclose(supercell[K.STRESS], cell[K.STRESS], atol=1e-7)  # intensive
    if K.MAGMOMS in cell:
        np.testing.assert_allclose(supercell[K.MAGMOMS], np.tile(cell[K.MAGMOMS], n), atol=1e-10)


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


@for_every_model(which=st.integers(0, 1), bond=st.floats(1.3, 2.4))
def test_continuous_as_a_periodic_image_crosses_each_cutoff(name, seed, fidelity, which, bond):
    """In a periodic cube, the image of atom C crosses a cutoff of atom A (B bonded to A)."""
    model = wrapped(name)
    cutoffs = [c for c in (model.graph_spec.cutoff, model.graph_spec.line_graph_cutoff) if c is not None]
    cutoff = cutoffs[which % len(cutoffs)]
    rng = np.random.default_rng(seed)
    side = 2 * max(cutoffs) + 2.0
    a, to_b, to_c = np.full(3, 1.0), _unit(rng) * bond, _unit(rng)
    delta = 1e-8
    cells = []
    for sign in (-1, 1):
        r = cutoff + sign * delta
        assume(all(min(abs(np.linalg.norm(to_c * d - to_b) - c) for c in cutoffs) > 1e-2 for d in (r - 1e-3, r + 1e-3)))
        c = a + to_c * r - np.array([side, 0.0, 0.0])  # C sits a lattice vector away from the image near A
        cells.append(Atoms([26, 8, 3], positions=[a, a + to_b, c], cell=np.eye(3) * side, pbc=True))
    decoy = random_crystal(rng, 3)
    inside, outside, _ = run(model, [*cells, decoy], [fidelity, fidelity, 1 - fidelity])
    work = -inside[K.FORCES][2] @ to_c * 2 * delta  # the energy changes only by the work over the 2δ step
    assert outside[K.ENERGY] - inside[K.ENERGY] == pytest.approx(work, abs=1e-10)
    np.testing.assert_allclose(inside[K.FORCES], outside[K.FORCES], atol=1e-6)
    np.testing.assert_allclose(inside[K.STRESS], outside[K.STRESS], atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_molecules_have_nan_stress_and_the_calculator_none(name):
    model = wrapped(name)
    molecule = Atoms([26, 8, 3], positions=[[0, 0, 0], [1.8, 0, 0], [0, 1.9, 0.3]])
    crystal = random_crystal(np.random.default_rng(3), 3)
    out_molecule, out_crystal = run(model, [molecule, crystal], [1, 0])
    assert np.isnan(out_molecule[K.STRESS]).all() and np.isfinite(out_crystal[K.STRESS]).all()
    molecule.calc = mfwrap.Calculator(model, fidelity="high")
    assert np.isfinite(molecule.get_forces()).all()
    with pytest.raises(PropertyNotImplementedError):
        molecule.get_stress()
