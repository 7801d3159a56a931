"""Perceptrons of CHGNet: the gated MLP with a factorised first layer, and the energy readout.

Every weight matrix is a plain ``nn.Linear`` that is called as a module, so that a wrapper
(e.g. a fidelity-conditioned subclass of ``nn.Linear``) can replace it in place.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "softplus": nn.Softplus}


def activation(name: str) -> nn.Module:
    """The activation module called ``name`` (one of :data:`ACTIVATIONS`)."""
    try:
        return ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown activation '{name}'; known are {sorted(ACTIVATIONS)}") from None


def normalization(name: str | None, dim: int) -> nn.Module:
    """``"layer"`` → LayerNorm(dim); None → identity."""
    if name is None:
        return nn.Identity()
    if name.lower() != "layer":
        raise ValueError(f"unsupported normalization '{name}'; use 'layer' or None")
    return nn.LayerNorm(dim)


def hidden_dims(hidden: int | Sequence[int] | None) -> list[int]:
    """CHGNet's hidden-size argument as a list: 0 / None → [] (a single linear layer)."""
    if hidden is None or hidden == 0:
        return []
    if isinstance(hidden, int):
        return [hidden]
    return [int(h) for h in hidden]


Source = tuple[Tensor, "Tensor | None"]


class FactorisedLinear(nn.Module):
    """A linear layer on a concatenation of gathered features, computed block by block.

        y_r = b + Σ_k W_k f_k[idx_k[r]]      (= Linear([f_1[idx_1[r]], …, f_K[idx_K[r]]]))

    Each source ``(f_k, idx_k)`` is projected where it lives (per atom, per bond) and only the
    projection is gathered onto the rows (edges, angles), unless the source has more rows than
    the index (then it is gathered first); ``idx_k = None`` means f_k is already per row.
    Block k is ``self.blocks[k]`` (an ``nn.Linear``; only block 0 has the bias b).
    """

    def __init__(self, in_dims: Sequence[int], out_dim: int, bias: bool = True) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(d, out_dim, bias=bias and k == 0) for k, d in enumerate(in_dims))

    def forward(self, sources: Sequence[Source]) -> Tensor:
        total, owned = None, False  # owned: ``total`` is a fresh tensor no backward formula reads
        for block, (features, index) in zip(self.blocks, sources, strict=True):
            gathered = index is not None and index.numel() >= features.shape[0]
            if index is None:
                part = block(features)
            elif gathered:
                part = block(features).index_select(0, index)
            else:
                part = block(features.index_select(0, index))
            if total is None:
                total, owned = part, gathered
            elif owned:
                total = total.add_(part)
            else:
                total, owned = total + part, True
        return total


def _tail(hidden: list[int], out_dim: int, act: str) -> nn.Sequential:
    """Layers after the first one: (activation, Linear) per remaining width, ending in ``out_dim``."""
    widths = hidden + [out_dim]
    layers: list[nn.Module] = []
    for d_in, d_out in zip(widths[:-1], widths[1:]):
        layers += [activation(act), nn.Linear(d_in, d_out)]
    return nn.Sequential(*layers)


class GatedMLP(nn.Module):
    """CHGNet's gated perceptron on a concatenated input x:

        out = act(N_c(MLP_c(x))) ⊙ sigmoid(N_g(MLP_g(x)))

    MLP_c, MLP_g: Linear → (act → Linear)* with widths ``hidden`` then ``out_dim``; N_c, N_g:
    LayerNorm (or identity). The first layers of both branches are one :class:`FactorisedLinear`
    ``first`` with 2·w outputs (core then gate, w = hidden[0] or out_dim); the rest are the
    ``nn.Sequential`` ``core`` and ``gate``.

    Args:
        in_dims: widths of the concatenated sources, in the order they are passed.
        out_dim: output width.
        hidden: hidden widths ([] = a single linear layer per branch).
        act: activation name.
        norm: "layer" or None.
    """

    def __init__(self, in_dims: Sequence[int], out_dim: int, hidden: list[int], act: str, norm: str | None) -> None:
        super().__init__()
        self.width = hidden[0] if hidden else out_dim
        self.first = FactorisedLinear(in_dims, 2 * self.width)
        self.core = _tail(hidden, out_dim, act)
        self.gate = _tail(hidden, out_dim, act)
        self.core_norm = normalization(norm, out_dim)
        self.gate_norm = normalization(norm, out_dim)
        self.activation = activation(act)

    def forward(self, sources: Sequence[Source]) -> Tensor:
        core, gate = self.first(sources).split(self.width, dim=-1)
        return self.activation(self.core_norm(self.core(core))) * torch.sigmoid(self.gate_norm(self.gate(gate)))


class Readout(nn.Module):
    """Per-atom energy from final atom features: E_i = MLP(N(x_i)), eV; (n, F) → (n,).

    N: LayerNorm or identity (``norm``); MLP: Linear → act → … → Linear(·, 1), hidden ``hidden``.
    """

    def __init__(self, in_dim: int, hidden: list[int], act: str, norm: str | None) -> None:
        super().__init__()
        self.norm = normalization(norm, in_dim)
        widths = [in_dim] + hidden
        layers: list[nn.Module] = []
        for d_in, d_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(d_in, d_out), activation(act)]
        layers.append(nn.Linear(widths[-1], 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(self.norm(x)).squeeze(-1)
