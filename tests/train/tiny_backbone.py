"""A tiny backbone implementing the backbone interface, and a synthetic two-fidelity dataset.

Shared by the training tests (and imported by the processes the DDP test spawns).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from ase import Atoms
from torch import nn
from torch_geometric.data import Batch

from mfwrap.data import keys as K
from mfwrap.data.graph import GraphSpec, edge_vectors, to_graph
from mfwrap.ops import scatter_sum
from mfwrap.physics import energy_and_derivatives

ELEMENTS = (3, 8, 26)


class ElementEnergies(nn.Module):
    """Frozen per-element reference energies μ_Z (index Z − 1), summed per structure."""

    def __init__(self, max_z: int = 94) -> None:
        super().__init__()
        self.element_energies = nn.Parameter(torch.zeros(max_z), requires_grad=False)

    def forward(self, batch) -> torch.Tensor:
        per_atom = self.element_energies[batch[K.ATOMIC_NUMBERS] - 1]
        return scatter_sum(per_atom, batch.batch, batch[K.CELL].shape[0])


class TinyBackbone(nn.Module):
    """Gaussian-filter message passing: E = Σ_i R(h_i) + Σ_i μ_{Z_i}, magmoms |W h_i|."""

    fidelity_spec = {
        "embedding": "atom_embedding",
        "message": ["filters.*", "updates.*"],
        "readout": ["readout", "magmom_head"],
        "composition": "composition",
    }

    def __init__(self, features: int = 8, layers: int = 2, cutoff: float = 3.5, seed: int | None = None) -> None:
        super().__init__()
        if seed is not None:
            torch.manual_seed(seed)
        self.config = {"features": features, "layers": layers, "cutoff": cutoff}
        self.graph_spec = GraphSpec(cutoff=cutoff)
        self.atom_embedding = nn.Embedding(94, features)
        self.register_buffer("centres", torch.linspace(0.5, cutoff, 8))
        self.filters = nn.ModuleList(nn.Linear(8, features) for _ in range(layers))
        self.updates = nn.ModuleList(nn.Linear(features, features) for _ in range(layers))
        self.readout = nn.Sequential(nn.Linear(features, features), nn.SiLU(), nn.Linear(features, 1))
        self.magmom_head = nn.Linear(features, 1)
        self.composition = ElementEnergies()

    def forward(self, batch) -> dict[str, torch.Tensor]:
        neighbour, centre = batch[K.EDGE_INDEX]
        r = edge_vectors(batch).norm(dim=-1, keepdim=True)
        envelope = 0.5 * (torch.cos(math.pi * r / self.graph_spec.cutoff) + 1.0)
        basis = torch.exp(-2.0 * (r - self.centres) ** 2) * envelope
        h = self.atom_embedding(batch[K.ATOMIC_NUMBERS] - 1)
        for filt, update in zip(self.filters, self.updates):
            messages = scatter_sum(h[neighbour] * filt(basis) * envelope, centre, h.shape[0])  # 0 at the cutoff
            h = h + torch.tanh(update(messages))
        structures = batch[K.CELL].shape[0]
        energy = scatter_sum(self.readout(h).squeeze(-1), batch.batch, structures) + self.composition(batch)
        return {K.ENERGY: energy, K.MAGMOMS: self.magmom_head(h).abs().squeeze(-1)}


def random_structures(count: int, seed: int) -> list[Atoms]:
    """4-atom fcc-like cells (a ≈ 4 Å) with random species, ±3 % strain and 0.1 Å noise."""
    rng = np.random.default_rng(seed)
    fractional = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    structures = []
    for _ in range(count):
        cell = 4.0 * (np.eye(3) + rng.uniform(-0.03, 0.03, (3, 3)))
        positions = fractional @ cell + rng.normal(0, 0.1, (4, 3))
        structures.append(Atoms(numbers=rng.choice(ELEMENTS, 4), positions=positions, cell=cell, pbc=True))
    return structures


def labelled_graphs(count: int, seed: int, fidelity: int, spec: GraphSpec, magmoms: bool = True):
    """Graphs labelled by a fixed teacher; fidelity 1 adds a smooth per-atom shift and offsets."""
    teacher = TinyBackbone(seed=1234)
    with torch.no_grad():
        teacher.composition.element_energies[[2, 7, 25]] = torch.tensor([-2.0, -5.0, -8.0])
        if fidelity == 1:
            teacher.composition.element_energies[[2, 7, 25]] += torch.tensor([0.3, -0.2, 0.5])
            teacher.readout[2].weight.mul_(1.2)
    structures = random_structures(count, seed)
    graphs = [to_graph(s, spec, fidelity=fidelity) for s in structures]
    out = energy_and_derivatives(teacher, Batch.from_data_list(graphs))
    per_atom_forces = out[K.FORCES].detach().split(4)
    per_atom_magmoms = out[K.MAGMOMS].detach().split(4)
    labelled = []
    for b, s in enumerate(structures):
        labels = {
            K.ENERGY: float(out[K.ENERGY][b].detach()),
            K.FORCES: per_atom_forces[b].numpy(),
            K.STRESS: out[K.STRESS][b].detach().numpy(),
            K.MAGMOMS: per_atom_magmoms[b].numpy() if magmoms else None,
        }
        labelled.append(to_graph(s, spec, fidelity=fidelity, labels=labels, name=f"s{b}"))
    return labelled
