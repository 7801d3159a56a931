"""matgl's M3GNet, TensorNet and CHGNet (matgl ≥ 4, built on PyG) as mfwrap backbones.

Each adapter holds a matgl model, unmodified, as ``self.model`` (state-dict keys ``model.*`` are
matgl's own) and replaces only how matgl gets its graph: instead of matgl's structure converters
and line-graph builders it reads mfwrap's periodic batch and calls the model's submodules
(embeddings, bases, interaction blocks, readout) in the order of the model's own ``forward``.

* Edges. matgl's edge ``(src, dst)`` has the vector ``r_dst + offshift - r_src`` (src = the centre);
  mfwrap's row 0 is the neighbour j and row 1 the centre i, so matgl's ``edge_index`` is mfwrap's
  flipped, and its bond vectors are :func:`~mfwrap.data.graph.edge_vectors` (differentiable in
  positions and cell, so :mod:`mfwrap.physics` gives forces −∂E/∂r and stress (1/V) ∂E/∂ε).
* Three-body graphs come from the batch's angle pairs (GraphSpec ``line_graph_cutoff`` = matgl's
  ``threebody_cutoff``): a pair (e1, e2) of edges from one centre c, both shorter than the cutoff.
  M3GNet's triple (bond i→j receiving, bond i→k) is (e1, e2). CHGNet's directed line-graph edge runs
  from the bond *into* c to the bond out of c, i.e. (reverse(e1), e2), with the incoming bond's
  vector flipped; its line-graph nodes are all E edges (matgl keeps only the short ones; the others
  take part in no angle, so they receive no message and keep their features), which keeps the rows
  of every bond-graph layer "edge" rows for mfwrap's surgery.
* Elements: atomic numbers become indices into the model's ``element_types``; an element outside it
  is a ValueError naming it.

Energy, as matgl's ``Potential`` computes it (eV, total per structure b)::

    E_b = σ Σ_{i∈b} ε_θ(i) + μ + Σ_{i∈b} ref_{Z_i}

with ε_θ the model's per-atom readout (extensive, ``is_intensive=False``), σ / μ the Potential's
``data_std`` / ``data_mean`` (1 and 0 for a fresh adapter) and ref the Potential's ``element_refs``
as an mfwrap composition table (``element_refs.element_energies[Z - 1]``, eV/atom; zeros for a
fresh adapter, fitted by every mfwrap training method). ZBL repulsion, charges and state (global)
features are not supported. matgl is imported only when an adapter is built.
"""

from __future__ import annotations

import abc
import functools
import inspect
from types import SimpleNamespace
from typing import Any, Mapping

import torch
from ase.data import atomic_numbers, chemical_symbols
from torch import Tensor, nn

from backbones.pyg import reverse_edges
from mfwrap.data import keys as K
from mfwrap.data.graph import MAX_ATOMIC_NUMBER, GraphSpec, edge_vectors, structure_index
from mfwrap.ops import scatter_sum_float64


@functools.cache
def _matgl() -> SimpleNamespace:
    """The matgl classes and tensor functions the adapters use (imported on first use)."""
    import matgl.models
    from matgl.apps.pes import Potential
    from matgl.graph._compute import compute_theta, compute_theta_and_phi
    from matgl.utils.cutoff import polynomial_cutoff
    from matgl.utils.maths import decompose_tensor, tensor_norm

    return SimpleNamespace(
        models=matgl.models,
        Potential=Potential,
        compute_theta=compute_theta,
        compute_theta_and_phi=compute_theta_and_phi,
        polynomial_cutoff=polynomial_cutoff,
        decompose_tensor=decompose_tensor,
        tensor_norm=tensor_norm,
    )


class ElementReference(nn.Module):
    r"""Per-element reference energies, the composition model: :math:`e_i = \mathrm{ref}_{Z_i}` (eV/atom).

    ``element_energies`` (94,) holds ref_Z at index Z − 1 (mfwrap's composition layout), frozen
    (requires_grad False) like matgl's ``AtomRef`` buffer; forward maps atomic numbers (n,) to (n,).
    """

    def __init__(self) -> None:
        super().__init__()
        self.element_energies = nn.Parameter(torch.zeros(MAX_ATOMIC_NUMBER), requires_grad=False)

    def forward(self, numbers: Tensor) -> Tensor:
        return self.element_energies.index_select(0, numbers - 1)


def _plain(value: Any) -> Any:
    """A constructor argument as a JSON-like value (tuples → lists, torch dtypes → their names)."""
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


class MatglAdapter(nn.Module, metaclass=abc.ABCMeta):
    """Common part of the adapters: building or adopting the matgl model, element types, energy.

    Subclasses name their matgl class (``matgl_class``), their default arguments (``defaults``),
    their graph (``_graph_spec``) and the per-atom readout (``atom_energies``).
    """

    matgl_class: str = ""
    defaults: Mapping[str, Any] = {}
    fidelity_spec: Mapping[str, Any] = {}

    def __init__(self, data_mean: float = 0.0, data_std: float = 1.0, **kwargs: Any) -> None:
        super().__init__()
        cls = getattr(_matgl().models, self.matgl_class)
        known = {name for name, p in inspect.signature(cls).parameters.items() if p.kind is not p.VAR_KEYWORD}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"{type(self).__name__}: unknown argument(s) {unknown} of matgl's {self.matgl_class}")
        arguments = {**self.defaults, **kwargs}
        if isinstance(arguments.get("element_types"), list):
            arguments["element_types"] = tuple(arguments["element_types"])
        if isinstance(arguments.get("dtype"), str):
            arguments["dtype"] = getattr(torch, arguments["dtype"])
        self.element_refs = ElementReference()
        self.register_buffer("data_mean", torch.tensor(float(data_mean)))
        self.register_buffer("data_std", torch.tensor(float(data_std)))
        self._adopt(cls(**arguments))

    def _adopt(self, model: nn.Module) -> None:
        """Make ``model`` (a matgl model of this adapter's class) the network; set graph_spec, config."""
        self._check(model)
        self.model = model
        self.graph_spec = self._graph_spec(model)
        types = torch.full((MAX_ATOMIC_NUMBER + 1,), -1, dtype=torch.long)
        self.element_types = tuple(model.element_types)
        for index, symbol in enumerate(self.element_types):
            types[atomic_numbers[symbol]] = index
        self.register_buffer("type_of_z", types, persistent=False)  # Z → index into element_types, -1: unknown
        self.config = {
            "data_mean": float(self.data_mean),
            "data_std": float(self.data_std),
            **{key: _plain(value) for key, value in model._init_args.items()},
        }

    @property
    def supported_numbers(self) -> list[int]:
        """Atomic numbers of ``element_types`` (what mfwrap's probe structures are made of)."""
        return [atomic_numbers[symbol] for symbol in self.element_types]

    def _check(self, model: nn.Module) -> None:
        """ValueError unless ``model`` predicts one extensive energy without state features."""
        args = model._init_args
        if args.get("is_intensive", False) or args.get("task_type", "regression") != "regression":
            raise ValueError(
                f"{type(self).__name__} adapts energy models: matgl's {self.matgl_class} must be built "
                "with is_intensive=False and task_type='regression' (a sum of per-atom energies)"
            )
        if args.get("ntargets", args.get("num_targets", 1)) != 1:
            raise ValueError(f"{type(self).__name__}: the matgl model has several targets; an energy model has one")
        if getattr(model, "include_state", False) or getattr(model, "include_states", False):
            raise ValueError(
                f"{type(self).__name__}: state (global) features are not supported; mfwrap inserts "
                "fidelity information itself (mfwrap.MultiFidelity)"
            )

    @classmethod
    def from_matgl(cls, model: nn.Module) -> "MatglAdapter":
        """This adapter around an existing matgl model (the same object, weights kept), or around a
        matgl ``Potential`` of one: then its ``data_mean``, ``data_std`` and ``element_refs`` are kept
        too (element refs re-indexed by Z into ``element_refs``)."""
        lib = _matgl()
        potential = model if isinstance(model, lib.Potential) else None
        network = potential.model if potential is not None else model
        expected = getattr(lib.models, cls.matgl_class)
        if not isinstance(network, expected):
            raise TypeError(
                f"{cls.__name__}.from_matgl expects a matgl {cls.matgl_class} or a Potential of one, "
                f"got {type(network).__name__}"
            )
        mean, std = 0.0, 1.0
        if potential is not None:
            if potential.calc_repuls or potential.calc_charge:
                raise ValueError(
                    "a matgl Potential with ZBL repulsion (calc_repuls) or charges (calc_charge) cannot be "
                    "adapted: mfwrap's energy is the network's plus the element references only"
                )
            if potential.data_mean.numel() != 1 or potential.data_std.numel() != 1:
                raise ValueError("only a Potential with scalar data_mean and data_std can be adapted")
            mean, std = float(potential.data_mean), float(potential.data_std)
        adapter = cls(data_mean=mean, data_std=std, **network._init_args)
        adapter._adopt(network)
        refs = getattr(potential, "element_refs", None)
        if refs is not None:
            offsets = refs.property_offset.detach().double().cpu()
            if offsets.dim() != 1 or offsets.shape[0] < len(adapter.element_types):
                raise ValueError(f"element_refs of shape {tuple(offsets.shape)} is not one energy per element type")
            with torch.no_grad():
                for index, symbol in enumerate(adapter.element_types):
                    adapter.element_refs.element_energies[atomic_numbers[symbol] - 1] = offsets[index]
        parameter = next(network.parameters())
        return adapter.to(device=parameter.device, dtype=parameter.dtype)

    def node_types(self, numbers: Tensor) -> Tensor:
        """(n,) indices into ``element_types`` of atomic numbers (n,); ValueError for an element not in it."""
        types = self.type_of_z.index_select(0, numbers)
        unknown = types < 0
        if bool(unknown.any()):
            z = int(numbers[unknown][0])
            raise ValueError(
                f"{type(self).__name__}: element {chemical_symbols[z]} (Z = {z}) is not among the "
                f"model's element_types ({len(self.element_types)} elements: "
                f"{', '.join(self.element_types[:12])}{', ...' if len(self.element_types) > 12 else ''})"
            )
        return types

    def forward(self, batch) -> dict[str, Tensor]:
        """batch → {"energy": (B,) eV} (+ "magmoms" (n,) μB where the model has a site-wise head)."""
        numbers = batch[K.ATOMIC_NUMBERS]
        out = self.atom_energies(batch, self.node_types(numbers))
        structure, count = structure_index(batch), batch[K.CELL].shape[0]
        energy = self.data_std * scatter_sum_float64(out.pop(K.ENERGY), structure, count) + self.data_mean
        out[K.ENERGY] = energy + scatter_sum_float64(self.element_refs(numbers), structure, count)
        return out

    @abc.abstractmethod
    def atom_energies(self, batch, types: Tensor) -> dict[str, Tensor]:
        """{"energy": (n,) per-atom network energies ε_θ(i), ...} (each model's own readout)."""

    @abc.abstractmethod
    def _graph_spec(self, model: nn.Module) -> GraphSpec:
        """The atom (and bond) graph cutoffs of ``model``."""


def _matgl_edges(batch) -> tuple[Tensor, Tensor, Tensor]:
    """(matgl edge_index (2, E): row 0 centre, row 1 neighbour; bond vectors (E, 3) Å; lengths (E,) Å)."""
    vectors = edge_vectors(batch)
    return batch[K.EDGE_INDEX].flip(0), vectors, torch.norm(vectors, dim=1)


class MatglM3GNet(MatglAdapter):
    r"""matgl's M3GNet (Chen & Ong 2022) on mfwrap's periodic graph.

    .. math::
        v_i^0 = \mathrm{Emb}(Z_i),\ e_{ij}^0 = \mathrm{MLP}(\mathrm{rbf}(r_{ij})),\quad
        e_{ij} \mathrel{+}= \mathrm{GMLP}\Big(\sum_{k \ne j} \mathrm{sbf}(r_{ik}, \theta_{jik}) \odot
        \sigma(W v_k) f_c(r_{ij}) f_c(r_{ik})\Big),\quad
        (e, v) \leftarrow \mathrm{M3GNetBlock}(e, v),\quad \varepsilon_i = \mathrm{GMLP}(v_i)

    (f_c: matgl's polynomial cutoff at ``threebody_cutoff``). Arguments are matgl's ``M3GNet``'s
    (defaults: matgl's, but ``is_intensive=False``); graph: ``cutoff``, angles within ``threebody_cutoff``.
    """

    matgl_class = "M3GNet"
    defaults = {"is_intensive": False}
    # E: the element embedding; M: the first linear of every message network (adding W_F onehot(f)
    # there equals appending the fidelity one-hot to the message input); not the radial filters
    # (edge_weight_func, node_weight_func), which vanish at the cutoff. R: the per-atom readout.
    fidelity_spec = {
        "embedding": "model.embedding.layer_node_embedding",
        "message": [
            "model.three_body_interactions.*.update_network_atom.layers.0",
            "model.three_body_interactions.*.update_network_bond.layers.0",
            "model.three_body_interactions.*.update_network_bond.gates.0",
            "model.graph_layers.*.conv.edge_update_func.layers.0",
            "model.graph_layers.*.conv.edge_update_func.gates.0",
            "model.graph_layers.*.conv.node_update_func.layers.0",
            "model.graph_layers.*.conv.node_update_func.gates.0",
        ],
        "readout": ["model.final_layer"],
        "composition": "element_refs",
    }

    def _graph_spec(self, model: nn.Module) -> GraphSpec:
        return GraphSpec(cutoff=float(model.cutoff), line_graph_cutoff=float(model.threebody_cutoff))

    def atom_energies(self, batch, types: Tensor) -> dict[str, Tensor]:
        m, lib = self.model, _matgl()
        edges, vectors, lengths = _matgl_edges(batch)
        triples = batch[K.ANGLE_EDGES]  # row 0: bond i→j (receives), row 1: bond i→k
        rbf = m.bond_expansion(lengths)
        angles = lib.compute_theta_and_phi(vectors, lengths, triples)
        basis = m.basis_expansion(angles["triple_bond_lengths"], angles["cos_theta"], angles["phi"])
        three_body_cutoff = lib.polynomial_cutoff(lengths, m.threebody_cutoff)
        node, edge, _ = m.embedding(types, rbf, None)
        num_atoms, num_edges = types.shape[0], lengths.shape[0]
        per_bond = torch.bincount(triples[0], minlength=num_edges)
        for three_body, block in zip(m.three_body_interactions, m.graph_layers):
            edge = three_body(edges[1], triples, per_bond, num_edges, basis, three_body_cutoff, node, edge)
            edge, node, _ = block(edges, edge, node, None, rbf, None, None, num_atoms, 1)
        return {K.ENERGY: m.final_layer(node).squeeze(-1)}


class MatglTensorNet(MatglAdapter):
    r"""matgl's TensorNet (Simeon & De Fabritiis 2023) on mfwrap's periodic graph.

    .. math::
        X_i = \mathrm{TensorEmbedding}(Z, r),\quad X \leftarrow \mathrm{Interaction}_t(X),\quad
        \varepsilon_i = \mathrm{GMLP}\big(W\,\mathrm{LN}(\|I_i\|, \|A_i\|, \|S_i\|)\big)

    with X_i = I_i + A_i + S_i (scalar, skew, traceless parts of rank-2 tensor features). Arguments
    are matgl's ``TensorNet``'s (defaults: matgl's, but ``is_intensive=False`` and
    ``use_warp=False``: the plain PyG layers, whose module paths the fidelity spec names).
    """

    matgl_class = "TensorNet"
    defaults = {"is_intensive": False, "use_warp": False}
    # Invariant places only: the element embedding, the pair-embedding linear emb2 (scalar per edge,
    # later times the cutoff-weighted radial tensors), the first linear of the scalar networks (on
    # norms per atom, on the radial basis per edge, both multiplied by tensors afterwards). The
    # tensor linears (linears_tensor) act on rotating features and are never named.
    fidelity_spec = {
        "embedding": "model.tensor_embedding.emb",
        "message": [
            "model.tensor_embedding.emb2",
            "model.tensor_embedding.linears_scalar.0",
            "model.layers.*.linears_scalar.0",
        ],
        "readout": ["model.final_layer"],
        "composition": "element_refs",
    }

    def _check(self, model: nn.Module) -> None:
        super()._check(model)
        if getattr(model, "_use_warp", False):
            raise ValueError("MatglTensorNet needs the PyG layers: build matgl's TensorNet with use_warp=False")

    def _graph_spec(self, model: nn.Module) -> GraphSpec:
        return GraphSpec(cutoff=float(model.cutoff))

    def atom_energies(self, batch, types: Tensor) -> dict[str, Tensor]:
        m, lib = self.model, _matgl()
        edges, vectors, lengths = _matgl_edges(batch)
        rbf = m.bond_expansion(lengths)
        features, _ = m.tensor_embedding(types, edges, rbf, lengths, vectors, None)
        for layer in m.layers:
            features = layer(edges, lengths, rbf, features)
        scalars, skew, traceless = lib.decompose_tensor(features)
        norms = torch.cat((lib.tensor_norm(scalars), lib.tensor_norm(skew), lib.tensor_norm(traceless)), dim=-1)
        return {K.ENERGY: m.final_layer(m.linear(m.out_norm(norms))).squeeze(-1)}


class MatglCHGNet(MatglAdapter):
    r"""matgl's CHGNet (Deng et al. 2023) on mfwrap's periodic graph, energy and magnetic moments.

    .. math::
        v^0 = \mathrm{Emb}(Z),\ e^0 = W\,\tilde{b}(r),\ a^0 = W\,\mathrm{Fourier}(\theta),\quad
        (v, e) \leftarrow \mathrm{AtomBlock}_t,\ (e, a) \leftarrow \mathrm{BondBlock}_t\ (t < T),\quad
        m_i = W_m v_i^{T-1},\ v \leftarrow \mathrm{AtomBlock}_T,\quad \varepsilon_i = \mathrm{MLP}(v_i)

    (b̃: radial Bessel basis times matgl's polynomial envelope; θ: bond angle at the centre).
    "magmoms" (n,) are the site-wise head's output m_i (μB) when ``num_site_targets == 1``.
    Arguments are matgl's ``CHGNet``'s (readout of atom features, summed).
    """

    matgl_class = "CHGNet"
    # M: the first linear (value and gate) of every gated message network, on atom, bond and angle
    # rows; not the shared radial weights (atom/bond/threebody_bond_weights, no bias, vanishing at
    # the cutoff). The magnetic-moment head is shared by all fidelities.
    fidelity_spec = {
        "embedding": "model.atom_embedding",
        "message": [
            "model.atom_graph_layers.*.conv.*_update_func.*.layers.0",
            "model.bond_graph_layers.*.conv.*_update_func.*.layers.0",
        ],
        "readout": ["model.final_layer"],
        "composition": "element_refs",
        "heads": ["model.sitewise_readout"],
    }

    def _check(self, model: nn.Module) -> None:
        super()._check(model)
        if model.readout_field != "atom_feat" or model.readout_operation != "sum":
            raise ValueError("MatglCHGNet adapts CHGNet with readout_field='atom_feat' and pooling_operation='sum'")

    def _graph_spec(self, model: nn.Module) -> GraphSpec:
        three_body = float(model.three_body_cutoff) if model.use_bond_graph else None
        return GraphSpec(cutoff=float(model.cutoff), line_graph_cutoff=three_body)

    def atom_energies(self, batch, types: Tensor) -> dict[str, Tensor]:
        m, lib = self.model, _matgl()
        edges, vectors, lengths = _matgl_edges(batch)
        rbf = m.bond_expansion(lengths)
        rbf = lib.polynomial_cutoff(rbf, m.cutoff, m.cutoff_exponent) * rbf  # as matgl: the envelope of the basis
        atom, bond = m.atom_embedding(types), m.bond_embedding(rbf)
        line_graph = rbf3 = all_bonds = centres = angle = None
        if m.use_bond_graph:
            first, second = batch[K.ANGLE_EDGES]
            line_graph = torch.stack(
                [reverse_edges(batch).index_select(0, first), second]
            )  # bond into c → bond out of c
            rbf3 = m.threebody_bond_expansion(lengths)
            rbf3 = lib.polynomial_cutoff(rbf3, m.three_body_cutoff, m.cutoff_exponent) * rbf3
            sign = vectors.new_full((lengths.shape[0], 1), -1.0)  # the incoming bond's vector, flipped
            cos_theta = lib.compute_theta(vectors, sign, line_graph[0], line_graph[1], directed=True)
            angle = m.angle_embedding(m.angle_expansion(torch.acos(torch.clamp(cos_theta, -1.0 + 1e-7, 1.0 - 1e-7))))
            all_bonds, centres = torch.arange(lengths.shape[0], device=lengths.device), edges[0].index_select(0, second)

        def weights(layer: nn.Module | None, basis: Tensor | None) -> Tensor | None:
            return layer(basis) if layer is not None and basis is not None else None

        atom_weights, bond_weights = weights(m.atom_bond_weights, rbf), weights(m.bond_bond_weights, rbf)
        three_body_weights = weights(m.threebody_bond_weights, rbf3)
        out: dict[str, Tensor] = {}
        for t, atom_block in enumerate(m.atom_graph_layers):
            if t == len(m.atom_graph_layers) - 1 and m._init_args.get("num_site_targets", 1) == 1:
                out[K.MAGMOMS] = m.sitewise_readout(atom).squeeze(-1)
            atom, bond, _ = atom_block(edges, atom, bond, rbf, None, None, atom_weights, bond_weights)
            if m.use_bond_graph and t < len(m.atom_graph_layers) - 1:
                bond, angle = m.bond_graph_layers[t](
                    line_graph, bond, angle, atom, all_bonds, centres, rbf3, three_body_weights
                )
        out[K.ENERGY] = m.final_dropout(m.final_layer(atom)).squeeze(-1)
        return out


def from_matgl(model: nn.Module) -> MatglAdapter:
    """The mfwrap adapter for a matgl ``M3GNet``, ``TensorNet`` or ``CHGNet`` (or a ``Potential`` of
    one), sharing its modules and weights (see :meth:`MatglAdapter.from_matgl`)."""
    lib = _matgl()
    network = model.model if isinstance(model, lib.Potential) else model
    for adapter in (MatglM3GNet, MatglTensorNet, MatglCHGNet):
        if isinstance(network, getattr(lib.models, adapter.matgl_class)):
            return adapter.from_matgl(model)
    raise TypeError(
        f"cannot adapt a {type(network).__name__}: backbones.matgl adapts matgl's M3GNet, TensorNet and "
        "CHGNet (or a matgl Potential of one)"
    )
