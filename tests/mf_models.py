"""Small backbones, random crystals and parameter perturbations shared by the multi-fidelity tests."""

from __future__ import annotations

import copy
import functools

import numpy as np
import torch
from ase import Atoms
from torch_geometric.data import Batch

from backbones.chgnet import CHGNet
from backbones.pyg import DimeNetPlusPlus, SchNet
from mfwrap.data.graph import to_graph
from mfwrap.mechanisms.composition import FidelityComposition
from mfwrap.mechanisms.embedding import FidelityEmbedding
from mfwrap.mechanisms.linear import FidelityLinear
from mfwrap.mechanisms.readout import FidelityReadout, ResidualFidelityReadout
from mfwrap.physics import energy_and_derivatives

ELEMENTS = (3, 8, 15, 26)


def small_backbone(name: str, seed: int = 0):
    """A few-thousand-parameter SchNet, DimeNet++ or CHGNet (with non-zero element energies), fresh copy."""
    return copy.deepcopy(_prototype(name, seed))


@functools.lru_cache(maxsize=None)
def _prototype(name: str, seed: int):
    torch.manual_seed(seed)
    if name == "schnet":
        return SchNet(hidden_channels=16, num_filters=16, num_interactions=2, num_gaussians=12, cutoff=4.0)
    if name == "dimenet":
        return DimeNetPlusPlus(
            hidden_channels=16,
            num_blocks=2,
            int_emb_size=8,
            basis_emb_size=4,
            out_emb_channels=16,
            num_spherical=3,
            num_radial=4,
            cutoff=3.0,
            output_initializer="glorot_orthogonal",
        )
    if name == "chgnet":
        model = CHGNet(
            atom_fea_dim=16,
            bond_fea_dim=16,
            angle_fea_dim=16,
            num_radial=7,
            num_angular=7,
            n_conv=3,
            atom_conv_hidden_dim=16,
            bond_conv_hidden_dim=16,
            mlp_hidden_dims=(16,),
            atom_graph_cutoff=4.0,
            bond_graph_cutoff=2.5,
        )
        with torch.no_grad():
            model.composition.element_energies.uniform_(-5.0, -1.0)
        return model
    raise ValueError(name)


def random_crystal(rng: np.random.Generator, max_atoms: int = 5) -> Atoms:
    """Random Li/O/P/Fe crystal, 2..max_atoms atoms, no two closer than 1.3 Å (images included)."""
    n = int(rng.integers(2, max_atoms + 1))
    cell = np.diag(rng.uniform(3.2, 4.5, 3)) + rng.uniform(-0.4, 0.4, (3, 3))
    atoms = Atoms(numbers=rng.choice(ELEMENTS, n), cell=cell, pbc=True)
    positions = []
    while len(positions) < n:
        candidate = rng.uniform(0, 1, 3) @ cell
        trial = Atoms(numbers=[1] * (len(positions) + 1), positions=positions + [candidate], cell=cell, pbc=True)
        if len(positions) == 0 or trial.get_distances(len(positions), range(len(positions)), mic=True).min() > 1.3:
            positions.append(candidate)
    atoms.positions = np.array(positions)
    return atoms


def batch_of(structures, spec, fidelities, dtype=torch.float32) -> Batch:
    graphs = [
        to_graph(s, spec, fidelity=f, dtype=dtype, on_isolated_atoms="ignore") for s, f in zip(structures, fidelities)
    ]
    return Batch.from_data_list(graphs)


def evaluate(model, batch) -> dict[str, np.ndarray]:
    out = energy_and_derivatives(model, batch, forces=True, stress=True)
    return {key: value.detach().numpy() for key, value in out.items()}


def perturb(model, mechanisms: str, scale: float = 0.3, seed: int = 1) -> None:
    """Randomise the fidelity parameters of the given mechanisms (readout: copies 1.. only)."""
    generator = torch.Generator().manual_seed(seed)
    owners = {
        "E": FidelityEmbedding,
        "M": FidelityLinear,
        "R": (FidelityReadout, ResidualFidelityReadout),
        "C": FidelityComposition,
    }
    with torch.no_grad():
        for module in model.modules():
            letter = next((m for m, cls in owners.items() if isinstance(module, cls)), None)
            if letter is None or letter not in mechanisms:
                continue
            if letter == "R":
                params = module.varying_parameters()
            else:
                params = [next(p for name, p in module.named_parameters(recurse=False))]
            for p in params:
                p.add_(scale * torch.randn(p.shape, generator=generator).to(p))


def deformed(atoms: Atoms, matrix: np.ndarray) -> Atoms:
    """A copy with positions and lattice vectors (rows) multiplied by ``matrix`` on the right:
    ``I + ε`` strains, a transposed rotation rotates."""
    copy = atoms.copy()
    copy.set_cell(atoms.cell.array @ matrix, scale_atoms=False)
    copy.positions = atoms.positions @ matrix
    return copy


def strain(a: int, b: int, h: float) -> np.ndarray:
    """I + h e_a e_b^T: a strain of size h in component (a, b)."""
    matrix = np.eye(3)
    matrix[a, b] += h
    return matrix


def rotation(seed: int) -> np.ndarray:
    """A random proper rotation (det +1)."""
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def rigidly_moved(atoms: Atoms, seed: int) -> tuple[list[Atoms], np.ndarray, np.ndarray]:
    """([rotated, translated, permuted] copies of ``atoms``, the rotation, the permutation)."""
    rng = np.random.default_rng(seed)
    matrix, order = rotation(seed), rng.permutation(len(atoms))
    moved = atoms.copy()
    moved.positions += rng.normal(size=3) * 3
    return [deformed(atoms, matrix.T), moved, atoms[order]], matrix, order


def assert_invariant_energy_covariant_forces(
    base: dict, moved: list[dict], matrix: np.ndarray, order: np.ndarray
) -> None:
    """Energies equal and forces rotated / unchanged / permuted for :func:`rigidly_moved`'s copies."""
    rot, trans, perm = moved
    scale = max(1.0, abs(base["energy"]))
    for other in moved:
        assert abs(other["energy"] - base["energy"]) <= 1e-10 * scale
    np.testing.assert_allclose(rot["forces"], base["forces"] @ matrix.T, atol=1e-9 * scale)
    np.testing.assert_allclose(trans["forces"], base["forces"], atol=1e-9 * scale)
    np.testing.assert_allclose(perm["forces"], base["forces"][order], atol=1e-9 * scale)
