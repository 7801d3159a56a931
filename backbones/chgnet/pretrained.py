"""Official CHGNet checkpoints, mapped onto ours (reading the weights shipped with the installed
``chgnet`` package) and written from ours (an exported model that chgnet itself loads).

Only checkpoint files are read or written (``torch.load`` of tensors only, ``torch.save``); chgnet's
code is never imported. Architecture options come from the checkpoint's ``model_args`` (cutoffs,
envelope exponent, basis sizes, norms); ``mlp_out_bias`` from whether the file holds those biases
(chgnet's own loader sets it for "0.2.0" only, which is the one file that holds them).

Name mapping, one table for both directions (:func:`_renames`; :func:`convert_state_dict` reads,
:func:`official_state_dict` writes), official → ours: ``atom_conv_layers.k.twoBody_atom`` →
``atom_convs.k.message``, ``bond_conv_layers.k.twoBody_bond`` → ``bond_convs.k.message``,
``angle_layers.k.twoBody_bond`` → ``angle_updates.k.message``, ``mlp`` → ``readout.mlp``,
``readout_norm`` → ``readout.norm``, ``site_wise`` → ``magmom_head``, ``composition_model.fc`` →
``composition.element_energies``; chgnet's MLPs interleave activations and dropout with their linear
layers (:func:`official_linear_positions`). The first linear layer of a gated MLP (core and gate,
columns = concatenated inputs) is cut into column blocks, one per input, with core and gate rows stacked.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from backbones.chgnet.mlp import GatedMLP
    from backbones.chgnet.model import CHGNet

VERSIONS = ("0.3.0", "0.2.0", "r2scan")

# our constructor argument → chgnet model_args key (absent keys: the defaults, equal on both sides)
_ARG_NAMES = {
    "atom_fea_dim": "atom_fea_dim",
    "bond_fea_dim": "bond_fea_dim",
    "angle_fea_dim": "angle_fea_dim",
    "num_radial": "num_radial",
    "num_angular": "num_angular",
    "n_conv": "n_conv",
    "atom_conv_hidden_dim": "atom_conv_hidden_dim",
    "bond_conv_hidden_dim": "bond_conv_hidden_dim",
    "angle_layer_hidden_dim": "angle_layer_hidden_dim",
    "update_bond": "update_bond",
    "update_angle": "update_angle",
    "mlp_hidden_dims": "mlp_hidden_dims",
    "non_linearity": "non_linearity",
    "atom_graph_cutoff": "atom_graph_cutoff",
    "bond_graph_cutoff": "bond_graph_cutoff",
    "cutoff_coeff": "cutoff_coeff",
    "learnable_rbf": "learnable_rbf",
    "gmlp_norm": "gMLP_norm",
    "readout_norm": "readout_norm",
    "conv_norm": "conv_norm",
}


def checkpoint_path(version: str) -> Path:
    """Path of the weights file for ``version`` inside the installed chgnet package."""
    if version not in VERSIONS:
        raise ValueError(f"unknown CHGNet weights '{version}'; available: {', '.join(VERSIONS)}")
    spec = importlib.util.find_spec("chgnet")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "CHGNet.from_pretrained reads the weights shipped with the 'chgnet' package, which is not "
            "installed; install it with `pip install chgnet==0.4.2` (weights are read, its code is not used)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "pretrained" / version
    files = sorted(folder.glob("*.pth.tar"))
    if len(files) != 1:
        raise FileNotFoundError(f"expected one *.pth.tar weights file in {folder}, found {len(files)}")
    return files[0]


def read_checkpoint(path: str | Path) -> tuple[dict, dict[str, Tensor]]:
    """(model_args, state_dict) of an official CHGNet checkpoint file; ValueError if it is not one."""
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
        model = content["model"]
        return dict(model["model_args"]), dict(model["state_dict"])
    except Exception as error:  # any failure to parse means a corrupt or foreign file
        raise ValueError(f"{path}: not a readable CHGNet checkpoint ({type(error).__name__}: {error})") from error


def config_from_checkpoint(model_args: dict, state_dict: dict[str, Tensor]) -> dict:
    """Our constructor arguments for an official checkpoint."""
    if not model_args.get("mlp_first", True):
        raise ValueError("only mlp_first=True checkpoints (per-atom readout, as all released weights) are supported")
    if model_args.get("final_mlp", "MLP") not in ("MLP", "normal"):
        raise ValueError(f"unsupported readout final_mlp={model_args['final_mlp']!r}")
    config = {ours: model_args[theirs] for ours, theirs in _ARG_NAMES.items() if theirs in model_args}
    config["mlp_out_bias"] = "atom_conv_layers.0.mlp_out.layers.1.bias" in state_dict
    return config


def official_linear_positions(hidden_layers: int) -> list[int]:
    """Positions of the ``nn.Linear`` layers in chgnet's ``MLP(...).layers`` with ``hidden_layers`` hidden
    widths: [Dropout, Linear] without any; else Linear, act, (Linear, act)*, Dropout, Linear."""
    if hidden_layers == 0:
        return [1]
    return [2 * i for i in range(hidden_layers)] + [2 * hidden_layers + 1]


def _gated_mlps(model: "CHGNet") -> list[tuple[str, str, "GatedMLP"]]:
    """(official prefix, our prefix, our module) of every gated MLP."""
    return (
        [
            (f"atom_conv_layers.{k}.twoBody_atom", f"atom_convs.{k}.message", c.message)
            for k, c in enumerate(model.atom_convs)
        ]
        + [
            (f"bond_conv_layers.{k}.twoBody_bond", f"bond_convs.{k}.message", c.message)
            for k, c in enumerate(model.bond_convs)
        ]
        + [
            (f"angle_layers.{k}.twoBody_bond", f"angle_updates.{k}.message", u.message)
            for k, u in enumerate(model.angle_updates)
        ]
    )


def _renames(model: "CHGNet") -> list[tuple[str, str]]:
    """(official prefix, our prefix) of every module that is renamed whole (the module docstring's
    mapping, except the first layers of the gated MLPs and the composition model)."""
    pairs = [
        ("atom_embedding", "atom_embedding"),
        ("bond_basis_expansion.rbf_expansion_ag", "radial_basis_atom_graph"),
        ("bond_basis_expansion.rbf_expansion_bg", "radial_basis_bond_graph"),
        ("angle_basis_expansion.fourier_expansion", "angle_basis"),
        ("bond_embedding", "bond_embedding"),
        ("bond_weights_ag", "bond_weights_atom_graph"),
        ("bond_weights_bg", "bond_weights_bond_graph"),
        ("angle_embedding", "angle_embedding"),
        ("site_wise", "magmom_head"),
        ("readout_norm", "readout.norm"),
    ]
    for kind, ours, norm, count in (
        ("atom_conv_layers", "atom_convs", "atom_norm", len(model.atom_convs)),
        ("bond_conv_layers", "bond_convs", "bond_norm", len(model.bond_convs)),
        ("angle_layers", "angle_updates", "angle_norm", len(model.angle_updates)),
    ):
        for k in range(count):
            pairs.append((f"{kind}.{k}.{norm}", f"{ours}.{k}.norm"))
            if kind != "angle_layers":
                pairs.append((f"{kind}.{k}.mlp_out.layers.1", f"{ours}.{k}.mlp_out"))
    for theirs, ours, gated in _gated_mlps(model):
        tail = official_linear_positions(len(gated.core) // 2)[1:]
        for branch, norm in (("core", "bn1"), ("gate", "bn2")):
            pairs.append((f"{theirs}.{norm}", f"{ours}.{branch}_norm"))
            pairs += [(f"{theirs}.mlp_{branch}.layers.{i}", f"{ours}.{branch}.{2 * p + 1}") for p, i in enumerate(tail)]
    readout = official_linear_positions((len(model.readout.mlp) - 1) // 2)
    pairs += [(f"mlp.layers.{i}", f"readout.mlp.{2 * p}") for p, i in enumerate(readout)]
    return pairs


def _move(state: dict, out: dict, source: str, target: str) -> None:
    """Rename every tensor of ``state`` under ``source.`` to ``target.`` in ``out``."""
    for key in [k for k in state if k.startswith(source + ".")]:
        out[target + key[len(source) :]] = state.pop(key)


def _first_layer(gated: "GatedMLP", theirs: str) -> list[str]:
    """Official names of the first linear layer of the core and gate branches of ``gated``."""
    first = official_linear_positions(len(gated.core) // 2)[0]
    return [f"{theirs}.mlp_{branch}.layers.{first}" for branch in ("core", "gate")]


def convert_state_dict(state_dict: dict[str, Tensor], model: "CHGNet") -> dict[str, Tensor]:
    """Official CHGNet state_dict → ours for ``model``; ValueError if a tensor is left unmapped."""
    state, out = dict(state_dict), {}
    out["composition.element_energies"] = state.pop("composition_model.fc.weight").reshape(-1)
    for theirs, ours in _renames(model):
        _move(state, out, theirs, ours)
    for theirs, ours, gated in _gated_mlps(model):  # column blocks, one per input; core and gate rows stacked
        weights, biases = zip(
            *((state.pop(f"{name}.weight"), state.pop(f"{name}.bias")) for name in _first_layer(gated, theirs))
        )
        start = 0
        for k, block in enumerate(gated.first.blocks):
            out[f"{ours}.first.blocks.{k}.weight"] = torch.cat(
                [w[:, start : start + block.in_features] for w in weights]
            )
            start += block.in_features
        out[f"{ours}.first.blocks.0.bias"] = torch.cat(biases)
    if state:
        raise ValueError(f"official CHGNet tensors with no counterpart in our model: {sorted(state)[:8]}")
    return out


def official_state_dict(model: "CHGNet") -> dict[str, Tensor]:
    """Our state_dict → official CHGNet's (the inverse of :func:`convert_state_dict`), detached copies."""
    state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    out = {"composition_model.fc.weight": state.pop("composition.element_energies").reshape(1, -1)}
    for theirs, ours in _renames(model):
        _move(state, out, ours, theirs)
    for theirs, ours, gated in _gated_mlps(model):
        weight = torch.cat([state.pop(f"{ours}.first.blocks.{k}.weight") for k in range(len(gated.first.blocks))], 1)
        bias = state.pop(f"{ours}.first.blocks.0.bias")
        for name, rows, row_bias in zip(_first_layer(gated, theirs), weight.chunk(2), bias.chunk(2)):
            out[f"{name}.weight"], out[f"{name}.bias"] = rows, row_bias
    if state:
        raise ValueError(f"tensors of our CHGNet with no counterpart in official CHGNet: {sorted(state)[:8]}")
    return out


def official_model_args(config: dict) -> dict:
    """chgnet ``model_args`` of the official architecture equal to ours with constructor args ``config``;
    ValueError where ours has no official equivalent."""
    if config.get("max_z", 94) != 94:
        raise ValueError(f"official CHGNet embeds elements Z = 1..94; this model has max_z = {config['max_z']}")
    args = {theirs: config[ours] for ours, theirs in _ARG_NAMES.items() if ours in config}
    # Angle updates run only after bond updates (in both); official CHGNet would build unused ones without them.
    args["update_angle"] = bool(config.get("update_angle", True) and config.get("update_bond", True))
    args.update(
        composition_model="MPtrj",  # an AtomRef (its weights are then loaded)
        mlp_first=True,
        is_intensive=True,
        mlp_out_bias=config.get("mlp_out_bias", False),
        conv_dropout=0,
        mlp_dropout=0,
    )
    return args


def save_official(model: "CHGNet", path: str | Path) -> None:
    """Write ``model`` as an official CHGNet checkpoint, atomically: ``{"model": {"model_args", "state_dict"}}``,
    which ``chgnet.model.CHGNet.from_file(path)`` loads (float32 tensors on the CPU, chgnet's own dtype)."""
    from mfwrap.files import save_torch

    args = official_model_args(model.config)
    state = {key: value.float().cpu() for key, value in official_state_dict(model).items()}
    save_torch({"model": {"model_args": args, "state_dict": state}}, path)


def load_pretrained(cls: type["CHGNet"], version: str) -> "CHGNet":
    """Build ``cls`` with the architecture of official weights ``version`` and load them; the model is
    marked as trained on elements mfwrap does not know (:data:`mfwrap.model_file.ELEMENTS_UNKNOWN`),
    so that fine-tuning fits its composition to the residual of its prediction."""
    from mfwrap.model_file import ELEMENTS_UNKNOWN

    path = checkpoint_path(version)
    model_args, state_dict = read_checkpoint(path)
    model = cls(**config_from_checkpoint(model_args, state_dict))
    try:
        model.load_state_dict(convert_state_dict(state_dict, model))
    except (KeyError, RuntimeError) as error:
        raise ValueError(f"{path}: weights do not fit the CHGNet architecture of its model_args: {error}") from error
    model.trained_elements = ELEMENTS_UNKNOWN
    return model.eval()
