"""Physics of any backbone (hypothesis, float64), through mfwrap.predict and mfwrap.physics:

forces = −∂E/∂r (central finite differences), stress = (1/V) ∂E/∂ε (finite strain), energy
invariant under rotation, translation and permutation (forces covariant), n-fold supercell
energy = n × cell energy, and energy and forces continuous as a neighbour crosses each cutoff.

Backbones: a smooth per-element pair potential defined here, and a random-initialised native
CHGNet (fewer examples, as each evaluation costs more).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.neighborlist import neighbor_list
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

import mfwrap
from backbones.chgnet import CHGNet
from mf_models import assert_invariant_energy_covariant_forces, deformed, rigidly_moved, strain
from mfwrap.data import GraphSpec, edge_vectors
from mfwrap.data import keys as K
from mfwrap.data.graph import EV_PER_A3_TO_GPA

pytestmark = pytest.mark.filterwarnings("ignore:.*no neighbour within")

ELEMENTS = (3, 8, 15, 26)  # Li, O, P, Fe


class PairPotential(nn.Module):
    """E_b = ½ Σ_{directed edges (i, j) in b} a_{Z_i} a_{Z_j} φ(r_ij) f_c(r_ij) + Σ_{i ∈ b} μ_{Z_i}, eV;

    φ(r) = e^{−2(r − r_0)} − 2 e^{−(r − r_0)} (Morse, r_0 = 1.8 Å), f_c(r) = (1 − (r/r_c)²)³,
    which vanishes with two derivatives at the cutoff r_c = 4 Å.
    """

    graph_spec = GraphSpec(cutoff=4.0)

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.pair_strength = nn.Parameter(torch.rand(95, generator=generator) + 0.5)
        self.atom_energy = nn.Parameter(-torch.rand(95, generator=generator))

    def forward(self, batch) -> dict[str, torch.Tensor]:
        neighbour, centre = batch[K.EDGE_INDEX]
        r = edge_vectors(batch).norm(dim=-1)
        z = batch[K.ATOMIC_NUMBERS]
        x = r - 1.8
        envelope = (1 - (r / self.graph_spec.cutoff) ** 2).clamp(min=0) ** 3
        pair = (
            0.5
            * self.pair_strength[z[centre]]
            * self.pair_strength[z[neighbour]]
            * (torch.exp(-2 * x) - 2 * torch.exp(-x))
        )
        per_atom = self.atom_energy[z].index_add(0, centre, pair * envelope)
        structure = batch.batch if getattr(batch, "batch", None) is not None else torch.zeros_like(z)
        return {K.ENERGY: torch.zeros(batch[K.CELL].shape[0], dtype=r.dtype).index_add(0, structure, per_atom)}


def _chgnet() -> nn.Module:
    torch.manual_seed(0)
    model = CHGNet(atom_graph_cutoff=5.0, bond_graph_cutoff=3.0).double()
    with torch.no_grad():  # a non-trivial composition model too
        model.composition.element_energies.uniform_(-3.0, -1.0)
    return model


EXAMPLES = {"pair": 25, "chgnet": 5}


@pytest.fixture(scope="module", params=list(EXAMPLES))
def backbone(request) -> tuple[str, nn.Module]:
    return request.param, PairPotential().double() if request.param == "pair" else _chgnet()


def for_all(name: str, *strategies):
    """Make the decorated check a hypothesis test with as many examples as backbone ``name`` affords."""

    def decorate(check):
        return settings(max_examples=EXAMPLES[name], deadline=None, suppress_health_check=[HealthCheck.too_slow])(
            given(*strategies)(check)
        )

    return decorate


@st.composite
def crystals(draw, max_atoms: int = 4) -> Atoms:
    """Random triclinic cells (3–6 Å), 1–max_atoms atoms of ELEMENTS at least 1.2 Å apart."""
    lengths = np.array([draw(st.floats(3.0, 6.0)) for _ in range(3)])
    directions = np.eye(3) + np.array([[draw(st.floats(-0.3, 0.3)) for _ in range(3)] for _ in range(3)])
    cell = directions / np.linalg.norm(directions, axis=1, keepdims=True) * lengths[:, None]
    assume(abs(np.linalg.det(cell)) > 0.5 * np.prod(lengths))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(1, max_atoms))
    atoms = Atoms(numbers=rng.choice(ELEMENTS, n), scaled_positions=rng.uniform(size=(n, 3)), cell=cell, pbc=True)
    assume(len(neighbor_list("i", atoms, 1.2)) == 0)
    return atoms


def _predict(model, structures, **kwargs) -> list[dict]:
    return mfwrap.predict(model, structures, batch_size=32, **kwargs)


def _energies(model, structures) -> np.ndarray:
    return np.array([p[K.ENERGY] for p in _predict(model, structures, forces=False, stress=False)])


def test_forces_are_minus_energy_gradient(backbone):
    name, model = backbone

    @for_all(name, crystals(), st.integers(0, 2**32 - 1))
    def check(atoms, seed):
        rng, h = np.random.default_rng(seed), 1e-4
        reference = _predict(model, atoms, stress=False)[0]
        moves = [(rng.integers(len(atoms)), rng.integers(3)) for _ in range(2)]
        displaced = []
        for atom, axis in moves:
            for sign in (1, -1):
                copy = atoms.copy()
                copy.positions[atom, axis] += sign * h
                displaced.append(copy)
        energies = _energies(model, displaced).reshape(-1, 2)
        for (atom, axis), (plus, minus) in zip(moves, energies):
            assert -(plus - minus) / (2 * h) == pytest.approx(reference[K.FORCES][atom, axis], rel=1e-5, abs=1e-6)

    check()


def test_stress_is_strain_derivative(backbone):
    name, model = backbone

    @for_all(name, crystals(), st.integers(0, 8), st.integers(0, 8))
    def check(atoms, first, second):
        h = 1e-5
        stress = _predict(model, atoms, forces=False)[0][K.STRESS]
        components = [divmod(first, 3), divmod(second, 3)]
        strained = []
        for a, b in components:
            strained += [deformed(atoms, strain(a, b, sign * h)) for sign in (1, -1)]
        energies = _energies(model, strained).reshape(-1, 2)
        volume = atoms.get_volume()
        for (a, b), (plus, minus) in zip(components, energies):
            expected = (plus - minus) / (2 * h) / volume * EV_PER_A3_TO_GPA
            assert stress[a, b] == pytest.approx(expected, rel=1e-5, abs=1e-5)

    check()


def test_energy_invariant_under_rotation_translation_permutation(backbone):
    name, model = backbone

    @for_all(name, crystals(), st.integers(0, 2**32 - 1))
    def check(atoms, seed):
        moved, matrix, order = rigidly_moved(atoms, seed)
        base, *others = _predict(model, [atoms, *moved], stress=False)
        assert_invariant_energy_covariant_forces(base, others, matrix, order)

    check()


def test_supercell_energy_is_extensive(backbone):
    name, model = backbone

    @for_all(name, crystals(max_atoms=3), st.tuples(*[st.integers(1, 2)] * 3).filter(lambda r: r != (1, 1, 1)))
    def check(atoms, repeats):
        cell, supercell = _predict(model, [atoms, atoms.repeat(repeats)], stress=False)
        n = int(np.prod(repeats))
        assert supercell[K.ENERGY] == pytest.approx(n * cell[K.ENERGY], rel=1e-10, abs=1e-9)
        np.testing.assert_allclose(supercell[K.FORCES], np.tile(cell[K.FORCES], (n, 1)), atol=1e-8)

    check()


def _unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=3)
    return v / np.linalg.norm(v)


def test_energy_and_forces_continuous_across_each_cutoff(backbone):
    """Atom C crosses a cutoff of atom A (a molecule A, B, C; B within the bond-graph cutoff of A)."""
    name, model = backbone
    cutoffs = [c for c in (model.graph_spec.cutoff, model.graph_spec.line_graph_cutoff) if c is not None]

    @for_all(name, st.sampled_from(cutoffs), st.floats(1.3, 2.5), st.integers(0, 2**32 - 1), st.sampled_from(ELEMENTS))
    def check(cutoff, bond, seed, element):
        a_to_b, a_to_c = _unit(seed) * bond, _unit(seed + 1)
        distances_bc = [np.linalg.norm(a_to_c * d - a_to_b) for d in (cutoff - 1e-3, cutoff + 1e-3)]
        assume(all(min(abs(d - c) for c in cutoffs) > 1e-2 for d in distances_bc))
        delta, direction = 1e-8, a_to_c
        molecules = [
            Atoms(numbers=[26, 8, element], positions=[np.zeros(3), a_to_b, direction * (cutoff + sign * delta)])
            for sign in (-1, 1)
        ]
        inside, outside = _predict(model, molecules, stress=False)
        # no jump: the energy changes only by the work of the force over the 2δ step
        work = -inside[K.FORCES][2] @ direction * 2 * delta
        assert outside[K.ENERGY] - inside[K.ENERGY] == pytest.approx(work, abs=1e-10)
        np.testing.assert_allclose(inside[K.FORCES], outside[K.FORCES], atol=1e-6)

    check()


def test_grad_mode_energy_only_follows_caller_and_derivatives_survive_no_grad():
    """Energy alone builds no graph under no_grad (what predict does); with parameter gradients on
    it stays differentiable (energy-only training); forces and stress are computed under no_grad."""
    from torch_geometric.data import Batch

    from mfwrap.data.graph import to_graph
    from mfwrap.physics import energy_and_derivatives

    model = _chgnet()
    atoms = Atoms(
        "LiFeO2",
        scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25], [0.75, 0.75, 0.75]],
        cell=np.eye(3) * 4.1,
        pbc=True,
    )
    batch = Batch.from_data_list([to_graph(atoms, model.graph_spec, dtype=torch.float64)])
    with torch.no_grad():
        energy_only = energy_and_derivatives(model, batch, forces=False, stress=False)
        full = energy_and_derivatives(model, batch)
    assert energy_only[K.ENERGY].grad_fn is None and not energy_only[K.ENERGY].requires_grad
    assert full[K.FORCES].abs().sum() > 0 and torch.isfinite(full[K.STRESS]).all()
    trained = energy_and_derivatives(model, batch, forces=False, stress=False)
    assert trained[K.ENERGY].requires_grad
    torch.testing.assert_close(trained[K.ENERGY].detach(), energy_only[K.ENERGY])
    # under no_grad the model runs on detached parameters (cheaper), which changes no result and
    # leaves the model as it was
    with_graph = energy_and_derivatives(model, batch, create_graph=True)
    for key in (K.ENERGY, K.FORCES, K.STRESS):
        torch.testing.assert_close(full[key], with_graph[key].detach())
    assert all(p.requires_grad for p in model.parameters() if p is not model.composition.element_energies)
