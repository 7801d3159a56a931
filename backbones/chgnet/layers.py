"""CHGNet's three interaction layers on the atom graph and the bond graph.

Notation: atoms i, j with features x (n, F_a); undirected bonds u with features e (U, F_b) and
smooth weights w from the radial basis (w^ag on all U bonds, w^bg on the S bonds that take part in
angles); directed edges (i ← j) with undirected bond u(ij);
angles t = (u1, u2) at centre atom c (two bonds out of c shorter than the bond-graph cutoff) with
features a (A, F_t). ⊕ is concatenation, ⊙ the elementwise product, g a :class:`GatedMLP`.

    AtomConv     x_i ← N( x_i + L( Σ_{j} g(x_i ⊕ e_u(ij) ⊕ x_j) ⊙ w^ag_u(ij) ) )
    BondConv     e_u ← N( e_u + L( Σ_{t: u1 = u} g(e_u1 ⊕ e_u2 ⊕ a_t ⊕ x_c) ⊙ w^bg_u1 ⊙ w^bg_u2 ) )
    AngleUpdate  a_t ← N( a_t + g(e_u1 ⊕ e_u2 ⊕ a_t ⊕ x_c) )

L is a linear layer (``mlp_out``), N an optional LayerNorm (``norm``). The first layer of each g is
factorised (see :class:`~backbones.chgnet.mlp.FactorisedLinear`): atom and bond blocks are
projected per atom / per bond and gathered onto edges and angles.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from backbones.chgnet.mlp import GatedMLP, normalization
from mfwrap.data import keys as K
from mfwrap.data.graph import structure_index
from mfwrap.ops import scatter_sum


class Geometry(NamedTuple):
    """The tensors of a batch the network reads besides its :class:`Topology` (plain tensors, so
    that :meth:`CHGNet.network` can be traced by ``torch.compile``).

    positions (n, 3) Å and cell (B, 3, 3) Å (differentiable: physics' strain acts on them),
    edge_shift (E, 3), edge_index (2, E), structure (n,) atom → structure, atomic_numbers (n,),
    undirected_to_edge (U,), angle_edges (2, A).
    """

    positions: Tensor
    cell: Tensor
    edge_shift: Tensor
    edge_index: Tensor
    structure: Tensor
    atomic_numbers: Tensor
    undirected_to_edge: Tensor
    angle_edges: Tensor

    @classmethod
    def of(cls, batch) -> "Geometry":
        return cls(
            batch[K.POSITIONS],
            batch[K.CELL],
            batch[K.EDGE_SHIFT],
            batch[K.EDGE_INDEX],
            structure_index(batch),
            batch[K.ATOMIC_NUMBERS],
            batch[K.UNDIRECTED_TO_EDGE],
            batch[K.ANGLE_EDGES],
        )


class Topology(NamedTuple):
    """Index tensors of one batch, shared by all layers.

    centre, neighbour, edge_bond: (E,) per directed edge: atom i, atom j, undirected bond u(ij).
    angle_centre, angle_bond: (A,) per angle: c and u1 (the bond that receives the update).
    short_bonds: (S,) the undirected bonds that take part in angles (shorter than the bond-graph
        cutoff); bond-graph layers project only these.
    angle_bond_short, angle_other_short: (A,) u1 and u2 as positions in ``short_bonds``.
    num_atoms, num_bonds: n and U.
    """

    centre: Tensor
    neighbour: Tensor
    edge_bond: Tensor
    angle_centre: Tensor
    angle_bond: Tensor
    short_bonds: Tensor
    angle_bond_short: Tensor
    angle_other_short: Tensor
    num_atoms: int
    num_bonds: int


class AtomConv(nn.Module):
    """Atom update from directed-edge messages (formula in the module docstring); (n, F_a) → (n, F_a)."""

    def __init__(
        self,
        atom_dim: int,
        bond_dim: int,
        hidden: list[int],
        act: str,
        gmlp_norm: str | None,
        norm: str | None,
        out_bias: bool,
    ) -> None:
        super().__init__()
        self.message = GatedMLP([atom_dim, bond_dim, atom_dim], atom_dim, hidden, act, gmlp_norm)
        self.mlp_out = nn.Linear(atom_dim, atom_dim, bias=out_bias)
        self.norm = normalization(norm, atom_dim)

    def forward(self, x: Tensor, e: Tensor, weight: Tensor, topo: Topology) -> Tensor:
        message = self.message([(x, topo.centre), (e, topo.edge_bond), (x, topo.neighbour)])
        message = message * weight.index_select(0, topo.edge_bond)
        return self.norm(x + self.mlp_out(scatter_sum(message, topo.centre, topo.num_atoms)))


class BondConv(nn.Module):
    """Bond update from angle messages (formula in the module docstring); (U, F_b) → (U, F_b)."""

    def __init__(
        self,
        atom_dim: int,
        bond_dim: int,
        angle_dim: int,
        hidden: list[int],
        act: str,
        gmlp_norm: str | None,
        norm: str | None,
        out_bias: bool,
    ) -> None:
        super().__init__()
        self.message = GatedMLP([bond_dim, bond_dim, angle_dim, atom_dim], bond_dim, hidden, act, gmlp_norm)
        self.mlp_out = nn.Linear(bond_dim, bond_dim, bias=out_bias)
        self.norm = normalization(norm, bond_dim)

    def forward(self, x: Tensor, e: Tensor, weight: Tensor, a: Tensor, topo: Topology) -> Tensor:
        """``weight``: w^bg of the short bonds (S, F_b)."""
        short = e.index_select(0, topo.short_bonds)
        message = self.message(
            [(short, topo.angle_bond_short), (short, topo.angle_other_short), (a, None), (x, topo.angle_centre)]
        )
        pair_weight = weight.index_select(0, topo.angle_bond_short) * weight.index_select(0, topo.angle_other_short)
        return self.norm(e + self.mlp_out(scatter_sum(message * pair_weight, topo.angle_bond, topo.num_bonds)))


class AngleUpdate(nn.Module):
    """Angle update (formula in the module docstring); (A, F_t) → (A, F_t)."""

    def __init__(
        self,
        atom_dim: int,
        bond_dim: int,
        angle_dim: int,
        hidden: list[int],
        act: str,
        gmlp_norm: str | None,
        norm: str | None,
    ) -> None:
        super().__init__()
        self.message = GatedMLP([bond_dim, bond_dim, angle_dim, atom_dim], angle_dim, hidden, act, gmlp_norm)
        self.norm = normalization(norm, angle_dim)

    def forward(self, x: Tensor, e: Tensor, a: Tensor, topo: Topology) -> Tensor:
        short = e.index_select(0, topo.short_bonds)
        update = self.message(
            [(short, topo.angle_bond_short), (short, topo.angle_other_short), (a, None), (x, topo.angle_centre)]
        )
        return self.norm(a + update)
