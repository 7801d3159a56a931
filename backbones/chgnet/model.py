"""Native CHGNet backbone on the mfwrap graph-data type (outputs equal to official CHGNet)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from backbones.chgnet.basis import FourierAngle, RadialBessel
from backbones.chgnet.layers import AngleUpdate, AtomConv, BondConv, Geometry, Topology
from backbones.chgnet.mlp import Readout, hidden_dims
from mfwrap.data import keys as K
from mfwrap.data.graph import GraphSpec, edge_vectors_of, structure_index
from mfwrap.ops import scatter_sum_float64

# 1 − 1e-6 keeps acos away from ±1, where its derivative diverges (as in CHGNet).
_COSINE_SHRINK = 1.0 - 1e-6


class AtomEmbedding(nn.Module):
    """Initial atom features X_Z: atomic numbers (n,) in 1..max_z → (n, F) learned vectors."""

    def __init__(self, dim: int, max_z: int = 94) -> None:
        super().__init__()
        self.embedding = nn.Embedding(max_z, dim)

    def forward(self, atomic_numbers: Tensor) -> Tensor:
        return self.embedding(atomic_numbers - 1)


class AtomRef(nn.Module):
    """Composition energy, linear in the element counts: E_ref(b) = Σ_{i ∈ b} μ_{Z_i}, eV (total).

    ``element_energies`` μ (max_z,) eV/atom is a fitted reference, frozen (requires_grad=False)
    as in CHGNet; forward(batch) → (B,) total eV per structure.
    """

    def __init__(self, max_z: int = 94) -> None:
        super().__init__()
        self.element_energies = nn.Parameter(torch.zeros(max_z), requires_grad=False)

    def forward(self, batch) -> Tensor:
        per_atom = self.element_energies.index_select(0, batch[K.ATOMIC_NUMBERS] - 1)
        return scatter_sum_float64(per_atom, structure_index(batch), batch[K.CELL].shape[0])


class CHGNet(nn.Module):
    """Crystal Hamiltonian Graph Network (Deng et al., Nat. Mach. Intell. 2023), native implementation.

    Energy (eV, total per structure b) and magnetic moments (μB):

        x⁰_i = X_{Z_i};   e⁰_u = W_e φ^ag(r_u);   a⁰_t = W_t ψ(θ_t)
        w^ag_u = W_ag φ^ag(r_u),  w^bg_u = W_bg φ^bg(r_u)          (radial bases at both cutoffs)
        for k = 1..K:  x ← AtomConv_k;  and for k < K:  e ← BondConv_k,  a ← AngleUpdate_k
        m_i = |W_m x_i + b_m|           after AtomConv_{K−1}
        E_b = Σ_{i ∈ b} R(x_i) + Σ_{i ∈ b} μ_{Z_i}

    Bond features live on undirected bonds u (atom-graph cutoff); angles t pair two bonds shorter
    than the bond-graph cutoff out of one atom. Official CHGNet predicts per-atom energy E_b / n_b.
    The last AngleUpdate's output is read by no later layer (in official CHGNet too), so it is not
    evaluated; its weights are kept for loading official checkpoints.

    Modules (names are a contract: multi-fidelity surgery finds them by name):
        atom_embedding  :class:`AtomEmbedding`, Z (n,) → X_Z (n, F).
        composition     :class:`AtomRef`, batch → (B,) total composition energy, eV.
        atom_convs, bond_convs, angle_updates   ``nn.ModuleList`` of :class:`AtomConv` (K),
                        :class:`BondConv` (K−1, or none), :class:`AngleUpdate` (K−1, or none); their
                        gated MLPs consist of plain ``nn.Linear`` modules, each called as a module.
        readout         :class:`Readout`, (n, F) → per-atom energies (n,), eV; summed per structure.
        magmom_head     ``nn.Linear(F, 1)``; magmoms are the absolute value of its output.

    Args (all stored in ``self.config``; ``CHGNet(**model.config)`` rebuilds the architecture):
        atom_fea_dim, bond_fea_dim, angle_fea_dim: feature widths.
        num_radial, num_angular: basis sizes (num_angular odd).
        n_conv: K, number of atom convolutions (≥ 2).
        atom_conv_hidden_dim, bond_conv_hidden_dim, angle_layer_hidden_dim: gated-MLP hidden
            widths (int, list, or 0 for a single linear layer).
        update_bond, update_angle: whether BondConv / AngleUpdate layers exist (angle updates
            need bond updates).
        mlp_hidden_dims: readout hidden widths.
        non_linearity: activation name.
        atom_graph_cutoff, bond_graph_cutoff: Å.
        cutoff_coeff: polynomial envelope exponent p.
        learnable_rbf: whether basis frequencies are trained.
        gmlp_norm, readout_norm, conv_norm: "layer" or None (inside gated MLPs, before the
            readout, after each convolution).
        mlp_out_bias: bias in each convolution's output linear layer.
        max_z: largest supported atomic number.
    """

    # Where mfwrap.MultiFidelity inserts its mechanisms (seed paper Sec. 2): E on the atom embedding,
    # M on the first linear layer (on the concatenated input, Eq. 7-8) of every gated MLP of AtomConv,
    # BondConv and AngleUpdate, R on the readout; C replaces the composition model. The magmom head
    # is shared by all fidelities (high-fidelity data alone carry magmoms).
    fidelity_spec = {
        "embedding": "atom_embedding",
        "message": ["atom_convs.*.message.first", "bond_convs.*.message.first", "angle_updates.*.message.first"],
        "readout": ["readout"],
        "composition": "composition",
        "heads": ["magmom_head"],
        "linear_types": {"FactorisedLinear": "blocks.0.bias"},
    }
    # Files this model writes besides mfwrap's: format name -> method(path) (``mfwrap export --format``).
    export_formats = {"chgnet": "save_official"}

    def __init__(
        self,
        *,
        atom_fea_dim: int = 64,
        bond_fea_dim: int = 64,
        angle_fea_dim: int = 64,
        num_radial: int = 31,
        num_angular: int = 31,
        n_conv: int = 4,
        atom_conv_hidden_dim: int | Sequence[int] = 64,
        bond_conv_hidden_dim: int | Sequence[int] = 64,
        angle_layer_hidden_dim: int | Sequence[int] = 0,
        update_bond: bool = True,
        update_angle: bool = True,
        mlp_hidden_dims: int | Sequence[int] = (64, 64, 64),
        non_linearity: str = "silu",
        atom_graph_cutoff: float = 6.0,
        bond_graph_cutoff: float = 3.0,
        cutoff_coeff: int = 8,
        learnable_rbf: bool = True,
        gmlp_norm: str | None = "layer",
        readout_norm: str | None = "layer",
        conv_norm: str | None = None,
        mlp_out_bias: bool = False,
        max_z: int = 94,
    ) -> None:
        config = {key: value for key, value in locals().items() if key not in ("self", "__class__")}
        super().__init__()
        for key in ("atom_conv_hidden_dim", "bond_conv_hidden_dim", "angle_layer_hidden_dim", "mlp_hidden_dims"):
            if not isinstance(config[key], int):
                config[key] = list(config[key])
        self.config = config
        if n_conv < 2:
            raise ValueError(f"n_conv must be at least 2 (magmoms are read after the second-last one), got {n_conv}")
        if bond_graph_cutoff > atom_graph_cutoff:
            raise ValueError(f"bond_graph_cutoff {bond_graph_cutoff} Å exceeds atom_graph_cutoff {atom_graph_cutoff} Å")
        self.n_conv = n_conv
        self.graph_spec = GraphSpec(cutoff=float(atom_graph_cutoff), line_graph_cutoff=float(bond_graph_cutoff))

        self.atom_embedding = AtomEmbedding(atom_fea_dim, max_z)
        self.composition = AtomRef(max_z)
        self.radial_basis_atom_graph = RadialBessel(num_radial, atom_graph_cutoff, cutoff_coeff, learnable_rbf)
        self.radial_basis_bond_graph = RadialBessel(num_radial, bond_graph_cutoff, cutoff_coeff, learnable_rbf)
        self.angle_basis = FourierAngle(num_angular, learnable_rbf)
        self.bond_embedding = nn.Linear(num_radial, bond_fea_dim, bias=False)
        self.bond_weights_atom_graph = nn.Linear(num_radial, atom_fea_dim, bias=False)
        self.bond_weights_bond_graph = nn.Linear(num_radial, bond_fea_dim, bias=False)
        self.angle_embedding = nn.Linear(num_angular, angle_fea_dim, bias=False)

        act, n_bond_layers = non_linearity, (n_conv - 1) if update_bond else 0
        self.atom_convs = nn.ModuleList(
            AtomConv(
                atom_fea_dim, bond_fea_dim, hidden_dims(atom_conv_hidden_dim), act, gmlp_norm, conv_norm, mlp_out_bias
            )
            for _ in range(n_conv)
        )
        self.bond_convs = nn.ModuleList(
            BondConv(
                atom_fea_dim,
                bond_fea_dim,
                angle_fea_dim,
                hidden_dims(bond_conv_hidden_dim),
                act,
                gmlp_norm,
                conv_norm,
                mlp_out_bias,
            )
            for _ in range(n_bond_layers)
        )
        self.angle_updates = nn.ModuleList(
            AngleUpdate(
                atom_fea_dim,
                bond_fea_dim,
                angle_fea_dim,
                hidden_dims(angle_layer_hidden_dim),
                act,
                gmlp_norm,
                conv_norm,
            )
            for _ in range(n_bond_layers if update_angle else 0)
        )
        self.readout = Readout(atom_fea_dim, hidden_dims(mlp_hidden_dims), act, readout_norm)
        self.magmom_head = nn.Linear(atom_fea_dim, 1)

    @classmethod
    def from_pretrained(cls, version: str = "0.3.0") -> "CHGNet":
        """Official weights "0.3.0", "0.2.0" or "r2scan" from the installed chgnet package (no network)."""
        from backbones.chgnet.pretrained import load_pretrained

        return load_pretrained(cls, version)

    def save_official(self, path) -> None:
        """Write this model as an official CHGNet checkpoint, which ``chgnet.model.CHGNet.from_file(path)``
        loads (:func:`backbones.chgnet.pretrained.save_official`); ValueError for an architecture that
        official CHGNet cannot build."""
        from backbones.chgnet.pretrained import save_official

        save_official(self, path)

    def compiled(self, **options) -> nn.Module:
        """This model with its network under ``torch.compile`` (:mod:`backbones.chgnet.compiled`)."""
        from backbones.chgnet.compiled import CompiledCHGNet

        return CompiledCHGNet(self, **options)

    @staticmethod
    def topology(batch) -> Topology:
        """Index tensors of ``batch``. One host-device synchronisation (``torch.unique``, the
        number of short bonds); all other sizes come from shapes."""
        neighbour, centre = batch[K.EDGE_INDEX]
        edge_bond = batch[K.EDGE_TO_UNDIRECTED]
        first_edge, second_edge = batch[K.ANGLE_EDGES]
        angle_bonds = edge_bond.index_select(0, batch[K.ANGLE_EDGES].reshape(-1))
        short_bonds, position = torch.unique(angle_bonds, return_inverse=True)
        angle_bond_short, angle_other_short = position.view(2, -1)
        return Topology(
            centre=centre,
            neighbour=neighbour,
            edge_bond=edge_bond,
            angle_centre=centre.index_select(0, first_edge),
            angle_bond=angle_bonds[: first_edge.shape[0]],
            short_bonds=short_bonds,
            angle_bond_short=angle_bond_short,
            angle_other_short=angle_other_short,
            num_atoms=batch[K.ATOMIC_NUMBERS].shape[0],
            num_bonds=batch[K.UNDIRECTED_TO_EDGE].shape[0],
        )

    def forward(self, batch) -> dict[str, Tensor]:
        """batch → {"energy": (B,) total eV, "magmoms": (n,) μB}."""
        out = self.network(Geometry.of(batch), self.topology(batch))
        out[K.ENERGY] = out[K.ENERGY] + self.composition(batch)
        return out

    def network(self, g: Geometry, topo: Topology) -> dict[str, Tensor]:
        """Everything but the composition energy: {"energy": (B,) Σ_i R(x_i) eV, "magmoms": (n,) μB}.

        Reads tensors only (no batch object, no host-device synchronisation), so it is the part
        that ``torch.compile`` traces (see :mod:`backbones.chgnet.compiled`).
        """
        vectors = edge_vectors_of(g.positions, g.cell, g.edge_shift, g.edge_index, g.structure)  # (E, 3) Å
        lengths = torch.linalg.vector_norm(vectors, dim=-1)
        bond_lengths = lengths.index_select(0, g.undirected_to_edge)
        rbf_atom_graph = self.radial_basis_atom_graph(bond_lengths)

        x = self.atom_embedding(g.atomic_numbers)
        e = self.bond_embedding(rbf_atom_graph)
        weights_atom_graph = self.bond_weights_atom_graph(rbf_atom_graph)
        if len(self.bond_convs):
            short_lengths = bond_lengths.index_select(0, topo.short_bonds)
            weights_bond_graph = self.bond_weights_bond_graph(self.radial_basis_bond_graph(short_lengths))
            a = self.angle_embedding(self.angle_basis(self._angles(vectors, lengths, g.angle_edges)))

        for k, atom_conv in enumerate(self.atom_convs):
            x = atom_conv(x, e, weights_atom_graph, topo)
            if k == self.n_conv - 2:
                magmoms = self.magmom_head(x).squeeze(-1).abs()
            if k < len(self.bond_convs):
                e = self.bond_convs[k](x, e, weights_bond_graph, a, topo)
                if k < len(self.angle_updates) and k + 1 < len(self.bond_convs):  # else a is never read again
                    a = self.angle_updates[k](x, e, a, topo)

        energy = scatter_sum_float64(self.readout(x), g.structure, g.cell.shape[0])
        return {K.ENERGY: energy, K.MAGMOMS: magmoms}

    @staticmethod
    def _angles(vectors: Tensor, lengths: Tensor, angle_edges: Tensor) -> Tensor:
        """θ_t (A,) rad between the two directed edges of each angle."""
        unit = vectors / lengths.unsqueeze(-1)
        first, second = angle_edges
        cosine = (unit.index_select(0, first) * unit.index_select(0, second)).sum(-1)
        return torch.acos(cosine * _COSINE_SHRINK)
