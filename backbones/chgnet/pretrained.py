"""Official CHGNet weights, read from the installed ``chgnet`` package and mapped onto ours.

Only the checkpoint files are read (``torch.load``, tensors only); chgnet's code is never
imported. Architecture options come from the checkpoint's ``model_args`` (cutoffs, envelope
exponent, basis sizes, norms); ``mlp_out_bias`` from whether the file holds those biases (chgnet's
own loader sets it for "0.2.0" only, which is the one file that holds them).

Name mapping, official → ours: ``atom_conv_layers.k.twoBody_atom`` → ``atom_convs.k.message``,
``bond_conv_layers.k.twoBody_bond`` → ``bond_convs.k.message``, ``angle_layers.k.twoBody_bond`` →
``angle_updates.k.message``, ``mlp`` → ``readout.mlp``, ``readout_norm`` → ``readout.norm``,
``site_wise`` → ``magmom_head``, ``composition_model.fc`` → ``composition.element_energies``.
The first linear layer of a gated MLP (core and gate, columns = concatenated inputs) is cut into
column blocks, one per input, with core and gate rows stacked.
"""

from __future__ import annotations

import importlib.util
import re
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


def _linear_indices(state: dict[str, Tensor], prefix: str) -> list[int]:
    """Sorted positions of the Linear layers in an official ``<prefix>.layers`` Sequential."""
    pattern = re.compile(re.escape(prefix) + r"\.layers\.(\d+)\.weight$")
    return sorted(int(m.group(1)) for key in state if (m := pattern.match(key)))


def _gated_mlp(state: dict, out: dict, theirs: str, ours: str, gated: "GatedMLP") -> None:
    """Move one official GatedMLP's tensors into ``out`` under our names (see module docstring)."""
    for branch, norm in (("core", "bn1"), ("gate", "bn2")):
        for name in ("weight", "bias"):
            key = f"{theirs}.{norm}.{name}"
            if key in state:
                out[f"{ours}.{branch}_norm.{name}"] = state.pop(key)
    layers = {b: _linear_indices(state, f"{theirs}.mlp_{b}") for b in ("core", "gate")}
    first = {
        b: (
            state.pop(f"{theirs}.mlp_{b}.layers.{layers[b][0]}.weight"),
            state.pop(f"{theirs}.mlp_{b}.layers.{layers[b][0]}.bias"),
        )
        for b in layers
    }
    start = 0
    for k, block in enumerate(gated.first.blocks):
        stop = start + block.in_features
        out[f"{ours}.first.blocks.{k}.weight"] = torch.cat([first[b][0][:, start:stop] for b in layers])
        start = stop
    out[f"{ours}.first.blocks.0.bias"] = torch.cat([first[b][1] for b in layers])
    for b in layers:
        for position, index in enumerate(layers[b][1:]):
            for name in ("weight", "bias"):
                out[f"{ours}.{b}.{2 * position + 1}.{name}"] = state.pop(f"{theirs}.mlp_{b}.layers.{index}.{name}")


def _move(state: dict, out: dict, theirs: str, ours: str) -> None:
    """Rename every official tensor under ``theirs.`` to ``ours.``."""
    for key in [k for k in state if k.startswith(theirs + ".")]:
        out[ours + key[len(theirs) :]] = state.pop(key)


def convert_state_dict(state_dict: dict[str, Tensor], model: "CHGNet") -> dict[str, Tensor]:
    """Official CHGNet state_dict → ours for ``model``; ValueError if a tensor is left unmapped."""
    state, out = dict(state_dict), {}
    out["composition.element_energies"] = state.pop("composition_model.fc.weight").reshape(-1)
    for theirs, ours in (
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
    ):
        _move(state, out, theirs, ours)
    for k, conv in enumerate(model.atom_convs):
        _gated_mlp(state, out, f"atom_conv_layers.{k}.twoBody_atom", f"atom_convs.{k}.message", conv.message)
        _move(state, out, f"atom_conv_layers.{k}.mlp_out.layers.1", f"atom_convs.{k}.mlp_out")
        _move(state, out, f"atom_conv_layers.{k}.atom_norm", f"atom_convs.{k}.norm")
    for k, conv in enumerate(model.bond_convs):
        _gated_mlp(state, out, f"bond_conv_layers.{k}.twoBody_bond", f"bond_convs.{k}.message", conv.message)
        _move(state, out, f"bond_conv_layers.{k}.mlp_out.layers.1", f"bond_convs.{k}.mlp_out")
        _move(state, out, f"bond_conv_layers.{k}.bond_norm", f"bond_convs.{k}.norm")
    for k, update in enumerate(model.angle_updates):
        _gated_mlp(state, out, f"angle_layers.{k}.twoBody_bond", f"angle_updates.{k}.message", update.message)
        _move(state, out, f"angle_layers.{k}.angle_norm", f"angle_updates.{k}.norm")
    for position, index in enumerate(_linear_indices(state, "mlp")):
        for name in ("weight", "bias"):
            out[f"readout.mlp.{2 * position}.{name}"] = state.pop(f"mlp.layers.{index}.{name}")
    if state:
        raise ValueError(f"official CHGNet tensors with no counterpart in our model: {sorted(state)[:8]}")
    return out


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
