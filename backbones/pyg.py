"""PyG's SchNet and DimeNet++ as mfwrap backbones, fed with the mfwrap periodic graph.

``torch_geometric.nn.models.SchNet`` and ``DimeNetPlusPlus`` build their own graph inside
``forward`` (``radius_graph`` on raw positions: no periodic images, no cell), so their forward
cannot be used for crystals. These adapters instantiate the PyG model with the given arguments,
take over its submodules *unmodified* (embedding, basis layers, interaction blocks, output
layers; same classes, same initialisation, same math) and replace only the forward's graph
construction with the graph of the batch:

* edges are ``batch.edge_index`` (row 0 = neighbour j, row 1 = centre i, PyG's ``j → i`` flow)
  with periodic shifts; distances are ``|edge_vectors(batch)|``, differentiable in positions and
  cell, so ``mfwrap.physics`` gives forces and stress.
* DimeNet++ triplets ``k → j → i`` are the bond-graph angle pairs of the batch (GraphSpec with
  ``line_graph_cutoff = cutoff``): an angle pair (e1, e2) of edges into j gives
  ``idx_kj = e1`` and ``idx_ji = reverse(e2)``; ``k ≠ i`` holds per periodic image (PyG's own
  ``triplets`` would drop a k that is another image of i). The angle is PyG's
  ``atan2(|v_ji × v_kj|, v_ji · v_kj)`` computed from shift-aware edge vectors.

Output: "energy" (B,) total, in the unit of the training labels (eV for mfwrap). Module paths
(and so state-dict keys) are the adapter's, listed in each class; ``fidelity_spec`` tells
:class:`mfwrap.MultiFidelity` where its mechanisms go.
"""

from __future__ import annotations

import inspect
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torch_geometric.nn import models as pyg_models

from mfwrap.data import keys as K
from mfwrap.data.graph import GraphSpec, edge_vectors, structure_index
from mfwrap.ops import scatter_sum, scatter_sum_float64


def _total(per_atom: Tensor, batch) -> Tensor:
    """(n,) per-atom energies → (B,) totals."""
    return scatter_sum_float64(per_atom, structure_index(batch), batch[K.CELL].shape[0])


class SchNet(nn.Module):
    r"""PyG SchNet (Schütt et al. 2017) on the periodic graph:

    .. math::
        h_i^0 = X_{Z_i},\quad h_i^{t+1} = h_i^t + \mathrm{Interaction}_t(h^t, d_{ij}),\quad
        E_b = \sum_{i \in b} [\mathrm{readout}(h_i^T)\,\sigma + \mu + \mathrm{atomref}_{Z_i}]

    Modules: ``embedding`` (nn.Embedding(100, hidden)), ``distance_expansion`` (Gaussian
    smearing), ``interactions`` (PyG ``InteractionBlock``s with their CFConv), ``readout``
    (Sequential(lin1, shifted softplus, lin2), per-atom (n, hidden) → (n, 1)), ``atomref``
    (nn.Embedding(100, 1) per-element energy μ_Z, eV: the composition model, zeros unless
    ``atomref`` is given, so that every training method can fit it). Arguments are PyG's (minus
    the graph-building ones; readout is always a sum, as energy is extensive).
    """

    def __init__(
        self,
        hidden_channels: int = 128,
        num_filters: int = 128,
        num_interactions: int = 6,
        num_gaussians: int = 50,
        cutoff: float = 10.0,
        mean: float | None = None,
        std: float | None = None,
        atomref: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.config = {
            "hidden_channels": hidden_channels,
            "num_filters": num_filters,
            "num_interactions": num_interactions,
            "num_gaussians": num_gaussians,
            "cutoff": cutoff,
            "mean": mean,
            "std": std,
            "atomref": None if atomref is None else [float(a) for a in torch.as_tensor(atomref).reshape(-1)],
        }
        reference = (
            torch.zeros(100, 1) if atomref is None else torch.as_tensor(atomref, dtype=torch.float32).reshape(-1, 1)
        )
        net = pyg_models.SchNet(
            hidden_channels, num_filters, num_interactions, num_gaussians, cutoff, mean=mean, std=std, atomref=reference
        )
        self.graph_spec = GraphSpec(cutoff=float(cutoff))
        self.embedding = net.embedding
        self.distance_expansion = net.distance_expansion
        self.interactions = net.interactions
        self.readout = nn.Sequential(net.lin1, net.act, net.lin2)
        self.atomref = net.atomref
        self.mean, self.std = mean, std
        self.register_load_state_dict_pre_hook(_zero_atomref_if_missing)

    fidelity_spec = {
        "embedding": "embedding",
        "message": ["interactions.*"],
        "readout": ["readout"],
        "composition": "atomref",
    }

    @classmethod
    def from_pyg(cls, net: pyg_models.SchNet) -> "SchNet":
        """This adapter around an existing (possibly trained) PyG ``SchNet``, sharing its modules and
        weights; its own radius graph is replaced by mfwrap's periodic graph. Sum readout of an
        energy only (no dipole)."""
        if net.dipole or type(net.readout).__name__ != "SumAggregation" or net.scale is not None:
            raise ValueError("only an energy SchNet with a sum readout (no dipole, no scale) can be adapted")
        atomref = None if net.atomref is None else net.atomref.weight.detach().reshape(-1).tolist()
        model = cls(
            net.hidden_channels,
            net.num_filters,
            net.num_interactions,
            net.num_gaussians,
            net.cutoff,
            mean=net.mean,
            std=net.std,
            atomref=atomref,
        )
        model.embedding, model.distance_expansion, model.interactions = (
            net.embedding,
            net.distance_expansion,
            net.interactions,
        )
        model.readout = nn.Sequential(net.lin1, net.act, net.lin2)
        if net.atomref is not None:
            model.atomref = net.atomref
        return model

    def forward(self, batch) -> dict[str, Tensor]:
        """batch → {"energy": (B,)}."""
        numbers = batch[K.ATOMIC_NUMBERS]
        distance = torch.linalg.vector_norm(edge_vectors(batch), dim=-1)
        edge_attr = self.distance_expansion(distance)
        h = self.embedding(numbers)
        for interaction in self.interactions:
            h = h + interaction(h, batch[K.EDGE_INDEX], distance, edge_attr)
        energy = self.readout(h)
        if self.mean is not None and self.std is not None:
            energy = energy * self.std + self.mean
        energy = energy + self.atomref(numbers)
        return {K.ENERGY: _total(energy.squeeze(-1), batch)}


def _zero_atomref_if_missing(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """Weights saved before the adapter always had ``atomref`` (atomref=None) load with zeros there."""
    if isinstance(module.atomref, nn.Embedding):  # not replaced by mechanism C
        state_dict.setdefault(f"{prefix}atomref.weight", torch.zeros_like(module.atomref.weight))


class OutputHead(nn.Module):
    """The per-atom part of PyG's ``OutputPPBlock``: lin_up → (act ∘ lin)* → lin; (n, H) → (n, out)."""

    def __init__(self, block: nn.Module, act: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.lin_up, self.lins, self.lin = block.lin_up, block.lins, block.lin
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        x = self.lin_up(x)
        for lin in self.lins:
            x = self.act(lin(x))
        return self.lin(x)


def reverse_edges(batch) -> Tensor:
    """(E,) index of the reverse of each directed edge ((i, j, S) ↔ (j, i, -S))."""
    to_undirected = batch[K.EDGE_TO_UNDIRECTED]
    edges = torch.arange(to_undirected.shape[0], device=to_undirected.device)
    pair_sum = scatter_sum(edges, to_undirected, batch[K.UNDIRECTED_TO_EDGE].shape[0])
    return pair_sum.index_select(0, to_undirected) - edges


class DimeNetPlusPlus(nn.Module):
    r"""PyG DimeNet++ (Gasteiger et al. 2020) on the periodic graph, energy output.

    .. math::
        m^0_{ji} = \mathrm{Emb}(Z_i, Z_j, \mathrm{rbf}(d_{ji})),\quad
        m^{t+1} = \mathrm{Interaction}_t(m^t, \mathrm{rbf}, \mathrm{sbf}(d_{kj}, \alpha_{kji})),\quad
        E_b = \sum_{i \in b} \sum_{t=0}^{T}
            \mathrm{head}_t\Big(\sum_{j} W^{rbf}_t \mathrm{rbf}(d_{ji}) \odot m^t_{ji}\Big)

    Modules: ``rbf``, ``sbf`` (Bessel / spherical bases), ``emb`` (PyG ``EmbeddingBlock``;
    ``emb.emb`` is the atomic-number embedding), ``interaction_blocks`` (PyG
    ``InteractionPPBlock``s), ``output_rbf`` (the ``lin_rbf`` of each PyG ``OutputPPBlock``:
    edge filter before the sum onto atoms) and ``output_heads`` (the rest of each
    ``OutputPPBlock`` as :class:`OutputHead`, per atom), ``atomref`` (nn.Embedding(100, 1),
    per-element energy μ_Z in eV added per atom, zeros at initialisation: the composition model,
    which PyG's DimeNet++ lacks). Arguments are PyG's (minus graph building; one output channel,
    the energy).
    """

    def __init__(
        self,
        hidden_channels: int = 128,
        num_blocks: int = 4,
        int_emb_size: int = 64,
        basis_emb_size: int = 8,
        out_emb_channels: int = 256,
        num_spherical: int = 7,
        num_radial: int = 6,
        cutoff: float = 5.0,
        envelope_exponent: int = 5,
        num_before_skip: int = 1,
        num_after_skip: int = 2,
        num_output_layers: int = 3,
        act: str = "swish",
        output_initializer: str = "zeros",
    ) -> None:
        super().__init__()
        self.config = {key: value for key, value in locals().items() if key not in ("self", "__class__")}
        net = pyg_models.DimeNetPlusPlus(
            hidden_channels,
            1,
            num_blocks,
            int_emb_size,
            basis_emb_size,
            out_emb_channels,
            num_spherical,
            num_radial,
            cutoff=cutoff,
            envelope_exponent=envelope_exponent,
            num_before_skip=num_before_skip,
            num_after_skip=num_after_skip,
            num_output_layers=num_output_layers,
            act=act,
            output_initializer=output_initializer,
        )
        self.graph_spec = GraphSpec(cutoff=float(cutoff), line_graph_cutoff=float(cutoff))
        self.rbf, self.sbf, self.emb = net.rbf, net.sbf, net.emb
        self.interaction_blocks = net.interaction_blocks
        self.output_rbf = nn.ModuleList(block.lin_rbf for block in net.output_blocks)
        self.output_heads = nn.ModuleList(OutputHead(block, block.act) for block in net.output_blocks)
        self.atomref = nn.Embedding(100, 1)
        nn.init.zeros_(self.atomref.weight)
        self.register_load_state_dict_pre_hook(_zero_atomref_if_missing)

    # M goes on the feature linears of the interaction blocks, not on the radial / spherical basis
    # filters (lin_rbf*, lin_sbf*): those have no bias and vanish with the envelope at the cutoff,
    # and a fidelity bias there would make the energy jump when a neighbour crosses the cutoff.
    fidelity_spec = {
        "embedding": "emb.emb",
        "message": [
            f"interaction_blocks.*.{name}"
            for name in ("lin_kj", "lin_ji", "lin_down", "lin_up", "layers_before_skip.*", "lin", "layers_after_skip.*")
        ],
        "readout": ["output_heads.*"],
        "composition": "atomref",
    }

    @classmethod
    def from_pyg(cls, net: pyg_models.DimeNetPlusPlus) -> "DimeNetPlusPlus":
        """This adapter around an existing (possibly trained) PyG ``DimeNetPlusPlus`` with one output
        channel, sharing its modules and weights; sizes are read from its layers. The activation
        must be one PyG names (swish/silu); the adapter's config records "swish"."""
        block, head = net.interaction_blocks[0], net.output_blocks[0]
        if head.lin.out_features != 1:
            raise ValueError(
                f"only an energy DimeNet++ (1 output channel) can be adapted, this one has {head.lin.out_features}"
            )
        model = cls(
            hidden_channels=net.emb.emb.embedding_dim,
            num_blocks=net.num_blocks,
            int_emb_size=block.lin_down.out_features,
            basis_emb_size=block.lin_rbf1.out_features,
            out_emb_channels=head.lin_up.out_features,
            num_spherical=net.sbf.num_spherical,
            num_radial=net.sbf.num_radial,
            cutoff=net.cutoff,
            envelope_exponent=net.rbf.envelope.p - 1,
            num_before_skip=len(block.layers_before_skip),
            num_after_skip=len(block.layers_after_skip),
            num_output_layers=len(head.lins),
        )
        model.rbf, model.sbf, model.emb, model.interaction_blocks = net.rbf, net.sbf, net.emb, net.interaction_blocks
        model.output_rbf = nn.ModuleList(b.lin_rbf for b in net.output_blocks)
        model.output_heads = nn.ModuleList(OutputHead(b, b.act) for b in net.output_blocks)
        return model

    def forward(self, batch) -> dict[str, Tensor]:
        """batch → {"energy": (B,)}."""
        vectors = edge_vectors(batch)
        distance = torch.linalg.vector_norm(vectors, dim=-1)
        idx_kj = batch[K.ANGLE_EDGES][0]
        idx_ji = reverse_edges(batch).index_select(0, batch[K.ANGLE_EDGES][1])
        v_ji, v_kj = vectors.index_select(0, idx_ji), vectors.index_select(0, idx_kj)
        angle = torch.atan2(torch.linalg.cross(v_ji, v_kj).norm(dim=-1), (v_ji * v_kj).sum(-1))

        rbf = self.rbf(distance)
        sbf = self.sbf(distance, angle, idx_kj)
        neighbour, centre = batch[K.EDGE_INDEX]
        num_atoms = batch[K.ATOMIC_NUMBERS].shape[0]
        m = self.emb(batch[K.ATOMIC_NUMBERS], rbf, centre, neighbour)
        energy = 0
        for t, head in enumerate(self.output_heads):
            if t:
                m = self.interaction_blocks[t - 1](m, rbf, sbf, idx_kj, idx_ji)
            energy = energy + head(scatter_sum(self.output_rbf[t](rbf) * m, centre, num_atoms))
        energy = energy + self.atomref(batch[K.ATOMIC_NUMBERS])
        return {K.ENERGY: _total(energy.squeeze(-1), batch)}


def adapt(model: nn.Module) -> nn.Module:
    """An mfwrap backbone for ``model``: a PyG ``SchNet`` or ``DimeNetPlusPlus`` instance is adapted
    (weights kept, see the ``from_pyg`` methods; periodic); an mfwrap backbone is returned as it is;
    another model whose forward takes ``(z, pos, batch)`` is wrapped by
    :class:`backbones.positions.PositionsModel` (its own non-periodic graph: molecules and clusters
    only, crystals are refused); anything else is an error saying what a backbone needs
    (:mod:`mfwrap.backbone`)."""
    if isinstance(model, pyg_models.SchNet):
        return SchNet.from_pyg(model)
    if isinstance(model, pyg_models.DimeNetPlusPlus):
        return DimeNetPlusPlus.from_pyg(model)
    if isinstance(getattr(model, "graph_spec", None), GraphSpec):
        return model
    if list(inspect.signature(model.forward).parameters)[:3] == ["z", "pos", "batch"]:
        from backbones.positions import PositionsModel

        return PositionsModel.wrap(model)
    raise TypeError(
        f"cannot adapt a {type(model).__name__}: backbones.pyg adapts torch_geometric SchNet and DimeNetPlusPlus "
        "instances and models whose forward takes (z, pos, batch); other "
        "networks become mfwrap backbones by having graph_spec, forward(batch) -> {'energy'} "
        "and config (mfwrap.backbone)"
    )
