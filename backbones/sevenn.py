"""SevenNet (Park et al., J. Chem. Theory Comput. 2024) as an mfwrap backbone, fed with the mfwrap graph.

SevenNet is a NequIP-style E(3)-equivariant network built by the ``sevenn`` package as a
sequence of modules that read and write named entries of one graph dict. This adapter takes
over those modules *unmodified* (same classes, weights and math; module paths and state-dict
keys are sevenn's own, e.g. ``0_convolution.weight_nn.layer0.weight``) and runs them on the
batch's periodic graph in place of sevenn's own graph preprocessing:

* edges: ``batch.edge_index`` flipped to sevenn's order (row 0 = centre i, row 1 = neighbour
  j; messages flow j → i); edge vectors ``r_j + S·cell − r_i`` (Å) from
  :func:`~mfwrap.data.graph.edge_vectors`, differentiable in positions and cell, so
  :mod:`mfwrap.physics` gives forces −∂E/∂r and stress by autograd (sevenn's own force/stress
  module is dropped, and so is its sum over atoms, done here per structure);
* species: Z → SevenNet's species index by its type map; an element the model was not trained
  on is a ValueError naming it. The one-hot vector is made here in the dtype of the positions
  (sevenn's own one-hot module is float32 only), so the model also runs in float64.

The network, with h the node features (irreps, e.g. ``128x0e+64x1e+32x2e``)::

    h_i⁰ = W_emb onehot(Z_i)                                                  (0e only)
    per layer t:  s_i = SC_t(h_i)
                  m_i = (1/d_t) Σ_j TP(SI1_t(h_j), Y(r̂_ij); R_t(B(r_ij) f_c(r_ij)))
                  h_i ← Gate(SI2_t(m_i) + s_i)
    E_b = Σ_{i∈b} [σ_{Z_i} W_2 W_1 h_i^T + μ_{Z_i}]                          (eV)

with e3nn linears SC_t, SI1_t, SI2_t, W_emb, W_1, W_2, spherical harmonics Y, a Bessel basis
B times the cutoff function f_c, the radial MLP R_t (bias-free) giving the tensor-product
weights, d_t a fixed denominator, and per-species scale σ and shift μ.

Where the fidelity mechanisms go (``fidelity_spec``): E on ``onehot_to_feature_x.linear`` (pure
``0e`` output); M on the self-interaction linears ``{t}_self_interaction_{1,2}.linear``, whose
outputs mix ``0e`` with rotating parts — the surgery puts the fidelity term on their ``0e``
columns only (their ``irreps_out``), as SevenNet's own multi-modal models append a modality
one-hot to the input of these layers; R on the per-atom readout linears. Not on the radial MLPs
R_t: they are bias-free and vanish with f_c at the cutoff, and a fidelity term there would make
the energy jump as a neighbour crosses the cutoff (mfwrap's continuity check rejects it).
Not on the self-connection linears SC_t either: a term there equals one on SI2_t (both are
added before the gate). C: no composition module of the backbone's own (shift μ is fixed);
mechanism C adds its per-fidelity element energies.

``sevenn`` is imported only inside functions of this module.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from backbones.ops import scatter_sum
from mfwrap.data import keys as K
from mfwrap.data.graph import GraphSpec, edge_vectors, structure_index

# sevenn modules the adapter does not run: its one-hot (made here, any dtype), its sum over atoms
# (made here per structure), its force/stress output and edge preprocessing (mfwrap.physics).
_REPLACED = ("OnehotEmbedding", "AtomReduce", "ForceOutput", "ForceStressOutput", "ForceStressOutputFromEdge",
             "EdgePreprocess")

# Convolution denominator d_t of a fresh model when none is given: sevenn's default ("avg_num_neigh")
# is a training-set statistic that an architecture config cannot compute.
DEFAULT_CONV_DENOMINATOR = 20.0


def _plain(value: Any) -> Any:
    """``value`` with numpy / torch numbers and arrays as Python floats, ints and lists (JSON-like)."""
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def model_config(options: Mapping[str, Any], strict: bool = True) -> dict[str, Any]:
    """A complete sevenn model config (JSON-like) from ``options``: sevenn's model defaults, then
    shift 0.0, scale 1.0 and a numeric denominator, then ``options``. ``chemical_species`` (list of
    symbols) sets the type map unless ``_type_map`` is given. Keys that are not model keys are an
    error if ``strict``, else dropped (a checkpoint's training keys); e3nn kernels are used (no
    cuEquivariance / flashTP / oeq)."""
    import sevenn._keys as KEY
    from sevenn import _const
    from sevenn.util import chemical_species_preprocess

    config = copy.deepcopy(_const.DEFAULT_E3_EQUIVARIANT_MODEL_CONFIG)
    config.update({KEY.SHIFT: 0.0, KEY.SCALE: 1.0, KEY.TRAIN_SHIFT_SCALE: False,
                   KEY.CONV_DENOMINATOR: DEFAULT_CONV_DENOMINATOR, KEY.TRAIN_DENOMINTAOR: False})
    species_keys = (KEY.CHEMICAL_SPECIES, KEY.NUM_SPECIES, KEY.TYPE_MAP, KEY.CHEMICAL_SPECIES_BY_ATOMIC_NUMBER)
    known = set(config) | set(species_keys) | {KEY.USE_MODALITY}
    unknown = sorted(set(options) - known)
    if strict and unknown:
        raise ValueError(f"not sevenn model-config keys: {unknown}; known are {sorted(known)}")
    config.update({key: value for key, value in options.items() if key in known})
    if KEY.TYPE_MAP not in options:
        if KEY.CHEMICAL_SPECIES not in options:
            raise ValueError("a fresh SevenNet needs chemical_species (element symbols), e.g. ['Li', 'Fe', 'P', 'O']")
        config.update(chemical_species_preprocess(list(options[KEY.CHEMICAL_SPECIES])))
    if config.get(KEY.USE_MODALITY):
        raise ValueError("multi-modal SevenNet models (e.g. 7net-mf-0) are not supported: mfwrap adds its own "
                         "fidelities to a single-fidelity backbone")
    if isinstance(config[KEY.CONV_DENOMINATOR], str):
        raise ValueError(f"conv_denominator {config[KEY.CONV_DENOMINATOR]!r} is a training-set statistic; give a number")
    config.update({KEY.CUEQUIVARIANCE_CONFIG: {}, KEY.USE_FLASH_TP: False, KEY.USE_OEQ: False})
    config[KEY.TYPE_MAP] = {int(z): int(i) for z, i in config[KEY.TYPE_MAP].items()}
    return _plain(config)


class SevenNet(nn.Module):
    r"""A SevenNet network on mfwrap's periodic graph (see the module docstring for the math).

    Build it as

    * ``SevenNet.from_pretrained("7net-0")`` — the weights shipped in the ``sevenn`` wheel
      (offline; any name sevenn's ``load_checkpoint`` knows); config ``{"pretrained": name}``;
    * ``SevenNet(chemical_species=[...], channel=16, lmax=1, num_convolution_layer=2, ...)`` — a
      fresh model; keyword arguments are sevenn model-config keys (sevenn's defaults otherwise,
      shift 0, scale 1, ``conv_denominator`` = ``DEFAULT_CONV_DENOMINATOR``); config = the complete
      sevenn model config;
    * ``SevenNet.from_sevenn(model_or_checkpoint, config=None)`` — an existing sevenn model
      (``AtomGraphSequential``, modules shared, weights kept) or ``SevenNetCheckpoint``.

    Output: ``{"energy": (B,) total eV}``. ``graph_spec.cutoff`` is the model's cutoff (Å).
    """

    fidelity_spec = {
        "embedding": "onehot_to_feature_x.linear",
        "message": ["*_self_interaction_1.linear", "*_self_interaction_2.linear"],
        "readout": ["reduce_input_to_hidden.linear", "reduce_hidden_to_energy.linear", "readout_FCN.fcn"],
        "composition": None,
        "heads": [],
        "linear_types": {"Linear": None},  # e3nn.o3.Linear; no bias path (a bias spans only its 0e outputs)
    }

    def __init__(self, pretrained: str | None = None, **sevenn_config: Any) -> None:
        super().__init__()
        if pretrained is not None:
            if sevenn_config:
                raise ValueError(f"give either pretrained or a sevenn config, not both (got {sorted(sevenn_config)})")
            from sevenn.util import load_checkpoint

            self._adopt(load_checkpoint(pretrained).build_model(), {"pretrained": pretrained})
        else:
            from sevenn.model_build import build_E3_equivariant_model

            config = model_config(sevenn_config)
            self._adopt(build_E3_equivariant_model(copy.deepcopy(config)), config)

    @classmethod
    def from_pretrained(cls, name: str = "7net-0") -> SevenNet:
        """The pretrained SevenNet ``name`` (e.g. "7net-0": SevenNet-0 11Jul2024, cutoff 5 Å, 89 elements)."""
        return cls(pretrained=name)

    @classmethod
    def from_sevenn(cls, model: Any, config: Mapping[str, Any] | None = None) -> SevenNet:
        """This adapter around a sevenn ``AtomGraphSequential`` (its modules shared, weights kept) or a
        ``SevenNetCheckpoint`` (built, with its config). ``config``: the sevenn config the model was
        built with; without one (and no checkpoint) the adapter works but cannot be saved and rebuilt."""
        if hasattr(model, "build_model") and hasattr(model, "config"):
            model, config = model.build_model(), model.config
        adapter = cls.__new__(cls)  # the network exists already: adopt it instead of building one
        nn.Module.__init__(adapter)
        adapter._adopt(model, None if config is None else model_config(config, strict=False))
        return adapter

    def _adopt(self, network: nn.Module, config: Mapping[str, Any] | None) -> None:
        """Take over the modules of sevenn ``network`` (except those in ``_REPLACED``) in order."""
        if network.type_map is None or not network.cutoff:
            raise ValueError("the sevenn model has no type_map or cutoff, so its species and graph are unknown")
        if getattr(network, "modal_map", None):
            raise ValueError("multi-modal SevenNet models (e.g. 7net-mf-0) are not supported")
        self.config = None if config is None else dict(config)
        self.graph_spec = GraphSpec(cutoff=float(network.cutoff))
        self.layer_names: tuple[str, ...] = tuple(
            name for name, module in network._modules.items() if type(module).__name__ not in _REPLACED)
        for name in self.layer_names:
            self.add_module(name, network._modules[name])
        type_map = {int(z): int(i) for z, i in network.type_map.items()}
        self.num_species = len(set(type_map.values()))
        index = torch.full((max(120, max(type_map) + 1),), -1, dtype=torch.long)
        index[list(type_map)] = torch.tensor(list(type_map.values()))
        self.register_buffer("species_index", index, persistent=False)  # Z -> species index, -1 unknown

    def species(self, numbers: Tensor) -> Tensor:
        """(n,) species indices of atomic numbers Z; ValueError naming any element the model does not know."""
        species = self.species_index.index_select(0, numbers)
        if bool((species < 0).any()):
            from ase.data import chemical_symbols

            unknown = sorted({int(z) for z in numbers[species < 0]})
            names = ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in unknown)
            raise ValueError(f"SevenNet: element(s) {names} not among the {self.num_species} elements this model "
                             "was trained on")
        return species

    def forward(self, batch) -> dict[str, Tensor]:
        """batch → {"energy": (B,) total eV}."""
        import sevenn._keys as KEY

        vectors = edge_vectors(batch)
        species = self.species(batch[K.ATOMIC_NUMBERS])
        onehot = nn.functional.one_hot(species, self.num_species).to(vectors.dtype)
        neighbour, centre = batch[K.EDGE_INDEX]
        structure = structure_index(batch)
        data = {KEY.NODE_FEATURE: onehot, KEY.NODE_ATTR: onehot, KEY.ATOM_TYPE: species, KEY.BATCH: structure,
                KEY.EDGE_IDX: torch.stack([centre, neighbour]), KEY.EDGE_VEC: vectors}
        for name in self.layer_names:
            data = self._modules[name](data)
        per_atom = data[KEY.ATOMIC_ENERGY].reshape(-1)
        return {K.ENERGY: scatter_sum(per_atom, structure, batch[K.CELL].shape[0])}
