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

Multi-modal SevenNet (SevenNet's own multi-fidelity design, as in SevenNet-MF-0):
:class:`MultiModalSevenNet` runs such a model with the batch's fidelity index f_b as sevenn's
modality m_b. sevenn appends onehot(m_b) as extra ``0e`` inputs to chosen linears (MF-0: every
SI1_t and SI2_t and the first readout linear W_1), so on the ``0e`` outputs
``y = (W a + V onehot(m)) / sqrt(fan_in_0e + n_m)`` (e3nn's normalisation; V random at
initialisation) and the rotating outputs are unchanged; the shift becomes a table μ_{m,Z} (eV/atom)
when ``use_modal_wise_shift``.

:meth:`SevenNet.fit_composition` fits the shift μ_Z (per modality: μ_{m,Z}) by mfwrap's least
squares (:func:`mfwrap.mechanisms.composition_fit.fit_linear_composition`), so that the trainer references a
bare SevenNet's energies per element as it does every other backbone's.

:meth:`SevenNet.save_sevenn` writes the model back as a sevenn checkpoint (``mfwrap export --format
sevenn``), which sevenn's ``SevenNetCalculator`` loads.

``sevenn`` is imported only inside functions of this module.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch_geometric.data import Data

from mfwrap.data import keys as K
from mfwrap.data.graph import GraphSpec, edge_vectors, structure_index
from mfwrap.fidelity import check_batch_fidelities
from mfwrap.model_file import ELEMENTS_UNKNOWN
from mfwrap.ops import scatter_sum_float64

# sevenn modules the adapter does not run: its one-hot (made here, any dtype), its sum over atoms
# (made here per structure), its force/stress output and edge preprocessing (mfwrap.physics).
_REPLACED = (
    "OnehotEmbedding",
    "AtomReduce",
    "ForceOutput",
    "ForceStressOutput",
    "ForceStressOutputFromEdge",
    "EdgePreprocess",
)

# Convolution denominator d_t of a fresh model when none is given: sevenn's default ("avg_num_neigh")
# is a training-set statistic that an architecture config cannot compute.
DEFAULT_CONV_DENOMINATOR = 20.0

# sevenn config keys of a multi-modal model besides its model keys (modality names and the shift / scale layout).
_MODAL_KEYS = ("use_modality", "_modal_map", "_number_of_modalities", "use_modal_wise_shift", "use_modal_wise_scale")


def multi_modal_options(modalities: Sequence[str]) -> dict[str, Any]:
    """sevenn config keys of a multi-modal model with ``modalities`` (index = position) as in
    SevenNet-MF-0: the modality one-hot on the self-interaction linears and the first readout
    linear (not the species embedding), one shift table per modality, one shared scale."""
    names = [str(m) for m in modalities]
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(f"a multi-modal SevenNet needs at least two distinct modality names, got {names}")
    return {
        "use_modality": True,
        "_modal_map": {name: i for i, name in enumerate(names)},
        "use_modal_node_embedding": False,
        "use_modal_self_inter_intro": True,
        "use_modal_self_inter_outro": True,
        "use_modal_output_block": True,
        "use_modal_wise_shift": True,
        "use_modal_wise_scale": False,
    }


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
    config.update(
        {
            KEY.SHIFT: 0.0,
            KEY.SCALE: 1.0,
            KEY.TRAIN_SHIFT_SCALE: False,
            KEY.CONV_DENOMINATOR: DEFAULT_CONV_DENOMINATOR,
            KEY.TRAIN_DENOMINTAOR: False,
        }
    )
    species_keys = (KEY.CHEMICAL_SPECIES, KEY.NUM_SPECIES, KEY.TYPE_MAP, KEY.CHEMICAL_SPECIES_BY_ATOMIC_NUMBER)
    known = set(config) | set(species_keys) | set(_MODAL_KEYS)
    unknown = sorted(set(options) - known)
    if strict and unknown:
        raise ValueError(f"not sevenn model-config keys: {unknown}; known are {sorted(known)}")
    config.update({key: value for key, value in options.items() if key in known})
    if KEY.TYPE_MAP not in options:
        if KEY.CHEMICAL_SPECIES not in options:
            raise ValueError("a fresh SevenNet needs chemical_species (element symbols), e.g. ['Li', 'Fe', 'P', 'O']")
        config.update(chemical_species_preprocess(list(options[KEY.CHEMICAL_SPECIES])))
    if config.get(KEY.USE_MODALITY):
        modal_map = {str(m): int(i) for m, i in dict(config.get(KEY.MODAL_MAP) or {}).items()}
        if len(modal_map) < 2 or sorted(modal_map.values()) != list(range(len(modal_map))):
            raise ValueError(
                f"a multi-modal SevenNet needs _modal_map {{name: index}} over indices 0..n-1, n >= 2; got {modal_map}"
            )
        config.update({KEY.MODAL_MAP: modal_map, KEY.NUM_MODALITIES: len(modal_map)})
        for key in (KEY.USE_MODAL_WISE_SHIFT, KEY.USE_MODAL_WISE_SCALE):
            config.setdefault(key, False)  # sevenn's data defaults
    else:
        for key in _MODAL_KEYS:
            config.pop(key, None)
    if isinstance(config[KEY.CONV_DENOMINATOR], str):
        raise ValueError(
            f"conv_denominator {config[KEY.CONV_DENOMINATOR]!r} is a training-set statistic; give a number"
        )
    config.update({KEY.CUEQUIVARIANCE_CONFIG: {}, KEY.USE_FLASH_TP: False, KEY.USE_OEQ: False})
    config[KEY.TYPE_MAP] = {int(z): int(i) for z, i in config[KEY.TYPE_MAP].items()}
    return _plain(config)


_CODEGEN = "._compiled_main"  # e3nn's generated tensor-product code (an fx GraphModule) under this name


def _drop_codegen_constants(module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    """Leave e3nn's code-generation constants out of the state dict: a deep copy of a tensor product turns
    them into buffers (``..._compiled_main_left_right._tensor_constant0``), which a rebuilt model lacks;
    they are derived from the irreps, not trained."""
    for key in [k for k in state_dict if k.startswith(prefix) and _CODEGEN in k and "_tensor_constant" in k]:
        del state_dict[key]


def _drop_codegen_constants_on_load(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    """The same on loading (a file written before they were left out)."""
    _drop_codegen_constants(module, state_dict, prefix, None)


def _codegen_constants_not_missing(module: nn.Module, incompatible_keys: Any) -> None:
    """Loading into a deep-copied model (which holds them as buffers) does not miss them either."""
    missing = incompatible_keys.missing_keys
    missing[:] = [k for k in missing if not (_CODEGEN in k and "_tensor_constant" in k)]


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
      (``AtomGraphSequential``, modules shared, weights kept) or ``SevenNetCheckpoint``; a
      multi-modal one gives a :class:`MultiModalSevenNet`.

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
    multi_modal = False  # whether the sevenn model reads a modality per structure (MultiModalSevenNet)
    # Files this model writes besides mfwrap's: format name -> method(path) (``mfwrap export --format``).
    export_formats = {"sevenn": "save_sevenn"}

    def __init__(self, pretrained: str | None = None, **sevenn_config: Any) -> None:
        super().__init__()
        if pretrained is not None:
            if sevenn_config:
                raise ValueError(f"give either pretrained or a sevenn config, not both (got {sorted(sevenn_config)})")
            from sevenn.util import load_checkpoint

            self._adopt(load_checkpoint(pretrained).build_model(), {"pretrained": pretrained})
            self.trained_elements = ELEMENTS_UNKNOWN  # pretrained elsewhere: see mfwrap.model_file
        else:
            from sevenn.model_build import build_E3_equivariant_model

            config = model_config(sevenn_config)
            self._adopt(build_E3_equivariant_model(copy.deepcopy(config)), config)

    @classmethod
    def from_pretrained(cls, name: str = "7net-0") -> SevenNet:
        """The pretrained SevenNet ``name`` (e.g. "7net-0": SevenNet-0 11Jul2024, cutoff 5 Å, 89 elements;
        "7net-mf-0" through :class:`MultiModalSevenNet`)."""
        return cls(pretrained=name)

    @classmethod
    def from_sevenn(cls, model: Any, config: Mapping[str, Any] | None = None) -> SevenNet:
        """This adapter around a sevenn ``AtomGraphSequential`` (its modules shared, weights kept) or a
        ``SevenNetCheckpoint`` (built, with its config); a multi-modal model gives a
        :class:`MultiModalSevenNet`. ``config``: the sevenn config the model was built with; without
        one (and no checkpoint) the adapter works but cannot be saved and rebuilt. Note that sevenn's
        calculator made on the same model instance switches its modules to single-structure mode:
        give it a copy."""
        if hasattr(model, "build_model") and hasattr(model, "config"):
            model, config = model.build_model(), model.config
        target = MultiModalSevenNet if cls is SevenNet and getattr(model, "modal_map", None) else cls
        adapter = target.__new__(target)  # the network exists already: adopt it instead of building one
        nn.Module.__init__(adapter)
        adapter._adopt(model, None if config is None else model_config(config, strict=False))
        return adapter

    def _adopt(self, network: nn.Module, config: Mapping[str, Any] | None) -> None:
        """Take over the modules of sevenn ``network`` (except those in ``_REPLACED``) in order."""
        if network.type_map is None or not network.cutoff:
            raise ValueError("the sevenn model has no type_map or cutoff, so its species and graph are unknown")
        modal_map = dict(getattr(network, "modal_map", None) or {})
        if bool(modal_map) != self.multi_modal:
            raise ValueError(
                f"the sevenn model is multi-modal (modalities {list(modal_map)}): use MultiModalSevenNet"
                if modal_map
                else "the sevenn model has no modalities (use_modality): use SevenNet"
            )
        self.config = None if config is None else dict(config)
        self.graph_spec = GraphSpec(cutoff=float(network.cutoff))
        self.layer_names: tuple[str, ...] = tuple(
            name for name, module in network._modules.items() if type(module).__name__ not in _REPLACED
        )
        for name in self.layer_names:
            module = network._modules[name]
            if hasattr(module, "_is_batch_data"):
                module._is_batch_data = True  # rows of several structures, indexed by KEY.BATCH
            self.add_module(name, module)
        if modal_map:
            self.fidelity_names = tuple(sorted(modal_map, key=modal_map.get))  # modality index = fidelity index
        type_map = {int(z): int(i) for z, i in network.type_map.items()}
        self.num_species = len(set(type_map.values()))
        index = torch.full((max(120, max(type_map) + 1),), -1, dtype=torch.long)
        index[list(type_map)] = torch.tensor(list(type_map.values()))
        self.register_buffer("species_index", index, persistent=False)  # Z -> species index, -1 unknown
        self.supported_numbers = sorted(type_map)  # what mfwrap's probe structures are made of
        self.register_state_dict_post_hook(_drop_codegen_constants)
        self.register_load_state_dict_pre_hook(_drop_codegen_constants_on_load)
        self.register_load_state_dict_post_hook(_codegen_constants_not_missing)

    def species(self, numbers: Tensor) -> Tensor:
        """(n,) species indices of atomic numbers Z; ValueError naming any element the model does not know."""
        species = self.species_index.index_select(0, numbers)
        if bool((species < 0).any()):
            from ase.data import chemical_symbols

            unknown = sorted({int(z) for z in numbers[species < 0]})
            names = ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in unknown)
            raise ValueError(
                f"SevenNet: element(s) {names} not among the {self.num_species} elements this model was trained on"
            )
        return species

    def sevenn_inputs(self, batch) -> dict[str, Tensor]:
        """sevenn's graph dict of ``batch``: one-hot species (n, n_species) in the positions' dtype,
        species indices, structure index, edges (centre, neighbour) and edge vectors (E, 3) Å."""
        import sevenn._keys as KEY

        vectors = edge_vectors(batch)
        species = self.species(batch[K.ATOMIC_NUMBERS])
        onehot = nn.functional.one_hot(species, self.num_species).to(vectors.dtype)
        neighbour, centre = batch[K.EDGE_INDEX]
        return {
            KEY.NODE_FEATURE: onehot,
            KEY.NODE_ATTR: onehot,
            KEY.ATOM_TYPE: species,
            KEY.BATCH: structure_index(batch),
            KEY.EDGE_IDX: torch.stack([centre, neighbour]),
            KEY.EDGE_VEC: vectors,
        }

    def forward(self, batch) -> dict[str, Tensor]:
        """batch → {"energy": (B,) total eV}."""
        import sevenn._keys as KEY

        data = self.sevenn_inputs(batch)
        structure = data[KEY.BATCH]
        for name in self.layer_names:
            data = self._modules[name](data)
        per_atom = data[KEY.ATOMIC_ENERGY].reshape(-1)
        return {K.ENERGY: scatter_sum_float64(per_atom, structure, batch[K.CELL].shape[0])}

    def save_sevenn(self, path: Any) -> None:
        """Write this model as a sevenn checkpoint (``{"config", "model_state_dict"}``, the complete sevenn
        model config with sevenn's version), which ``sevenn.util.load_checkpoint`` and
        ``SevenNetCalculator(model=path)`` load; atomically. The adapted modules keep sevenn's names, so the
        state dict is the network's own. ValueError for an adapter made without a config (``from_sevenn``
        of a bare model), whose architecture sevenn could not rebuild."""
        import sevenn
        from sevenn.util import load_checkpoint

        from mfwrap.files import save_torch

        if self.config is None:
            raise ValueError(
                "this SevenNet was adapted from a sevenn model without its config, so sevenn could not rebuild it; "
                "adapt a SevenNetCheckpoint or pass config= to SevenNet.from_sevenn"
            )
        pretrained = self.config.get("pretrained")
        config = dict(load_checkpoint(pretrained).config) if pretrained else copy.deepcopy(self.config)
        state = {key: value.detach().cpu() for key, value in self.state_dict().items()}
        save_torch({"config": {**config, "version": sevenn.__version__}, "model_state_dict": state}, path)

    def _species_shift(self) -> tuple[Tensor, Tensor]:
        """(the shift μ of the energy rescaling, [m,] species-wise; Z of each species); ValueError for one
        scalar shift, which cannot hold per-element energies."""
        shift = next(m for m in self.children() if type(m).__name__.endswith("Rescale")).shift
        if shift.shape[-1] != self.num_species:
            raise ValueError(
                "this SevenNet has one scalar energy shift, not one per element; build it with "
                f"shift=[0.0] * {self.num_species} (species-wise) to hold per-element energies"
            )
        numbers = torch.full((self.num_species,), -1, dtype=torch.long)
        numbers[self.species_index[self.species_index >= 0]] = (self.species_index >= 0).nonzero().flatten()
        return shift, numbers

    def add_element_energies(self, energies: Tensor) -> None:
        """Add per-element energies (eV/atom, index Z) to the species-wise shift μ_Z of the energy rescaling
        ``E_i = σ y_i + μ_{Z_i}``, in place: where an exported fidelity's element energies of mechanism C go
        (:func:`mfwrap.export.export_fidelity`). ValueError for a scalar or modal-wise shift."""
        shift, numbers = self._species_shift()
        if shift.dim() != 1:
            raise ValueError("this SevenNet's shift is one table per modality; add element energies to one of them")
        table = torch.zeros(len(self.species_index), dtype=torch.float64)
        count = min(len(table), len(energies))
        table[:count] = energies[:count].detach().double().cpu()
        with torch.no_grad():
            shift.add_(table[numbers].to(shift))

    def fit_composition(self, graphs: Sequence[Data], ridge: float = 1e-6, residual: bool = False) -> None:
        r"""Fit the per-species shift μ_Z (eV/atom) of the energy rescaling ``E_i = σ y_i + μ_{Z_i}``
        by least squares on the energy labels of ``graphs``
        (:func:`~mfwrap.mechanisms.composition_fit.fit_linear_composition`,
        per-atom energies; elements absent from the data keep their μ), in place. With a modal-wise
        shift μ_{m,Z}: one fit per modality m on its graphs (fidelity index = m), pulled towards the
        fit over all graphs, which a modality without energy labels takes. A model built with one
        scalar shift (sevenn's ``Rescale``) cannot hold per-element energies: a ValueError says how to build one.
        ``residual``: each μ gains the correction fitted to E − E_model, this model's own prediction
        (:mod:`mfwrap.mechanisms.composition_fit`); a modality without energy labels keeps its μ."""
        from mfwrap.mechanisms.composition_fit import fit_linear_composition, residuals

        shift, numbers = self._species_shift()
        width = len(self.species_index)
        table = torch.zeros(*shift.shape[:-1], width, dtype=torch.float64)
        table[..., numbers] = shift.detach().double().cpu()  # [m,] Z -> μ
        rows = table.reshape(-1, width)  # one row, or one per modality
        if residual:
            graphs = residuals(self, graphs)
        fitted = []
        for m, current in enumerate(rows):
            prior = torch.zeros_like(current) if residual else current
            pooled = fit_linear_composition(graphs, ridge=ridge, prior=prior, num_elements=width)
            own = [g for g in graphs if int(g[K.FIDELITY]) == m and bool(g[K.mask_key(K.ENERGY)].all())]
            if residual and len(rows) > 1 and not own:
                fitted.append(current)
                continue
            fit = (
                fit_linear_composition(own, ridge=ridge, prior=pooled, num_elements=width)
                if own and len(rows) > 1
                else pooled
            )
            fitted.append(current + fit if residual else fit)
        fitted = torch.stack(fitted).reshape(table.shape)
        with torch.no_grad():
            shift.copy_(fitted[..., numbers].to(shift))


class MultiModalSevenNet(SevenNet):
    r"""SevenNet's own multi-fidelity model ("multi-modal", as SevenNet-MF-0) on mfwrap's periodic
    graph: each structure b is run at modality m_b = its fidelity index ``batch.fidelity``, which
    sevenn's modal linears read as the extra ``0e`` inputs onehot(m_b) (see the module docstring).

    * ``MultiModalSevenNet(chemical_species=[...], modalities=["low", "high"], channel=..., ...)`` —
      fresh, with SevenNet-MF-0's choices (:func:`multi_modal_options`; sevenn config keys given
      override them); the config keeps them as sevenn keys (``_modal_map`` ...);
    * ``MultiModalSevenNet.from_pretrained("7net-mf-0")``, or ``SevenNet.from_sevenn`` of a
      multi-modal sevenn model or checkpoint.

    ``fidelity_names``: the modality names in index order, so :func:`mfwrap.predict`, the
    calculator and the trainer name fidelities as sevenn names modalities. Output: ``{"energy": (B,) eV}``.
    """

    multi_modal = True

    def __init__(
        self, pretrained: str | None = None, modalities: Sequence[str] | None = None, **sevenn_config: Any
    ) -> None:
        if modalities is not None:
            if pretrained is not None:
                raise ValueError("a pretrained model has its own modalities; give either pretrained or modalities")
            sevenn_config = {**multi_modal_options(modalities), **sevenn_config}
        super().__init__(pretrained, **sevenn_config)

    def sevenn_inputs(self, batch) -> dict[str, Tensor]:
        """As :meth:`SevenNet.sevenn_inputs`, plus the modality per structure: index m_b (B,) and
        onehot(m_b) (B, n_m) in the positions' dtype; ValueError for an index out of range."""
        import sevenn._keys as KEY

        data = super().sevenn_inputs(batch)
        check_batch_fidelities(batch, self.fidelity_names)
        modality = batch[K.FIDELITY].reshape(-1)
        onehot = nn.functional.one_hot(modality, len(self.fidelity_names)).to(data[KEY.EDGE_VEC].dtype)
        return {**data, KEY.MODAL_TYPE: modality, KEY.MODAL_ATTR: onehot}
