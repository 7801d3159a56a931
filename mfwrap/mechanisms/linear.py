"""M: the one-hot-augmented linear layer of the multi-fidelity message functions."""

from __future__ import annotations

import copy
from functools import reduce

import torch
from torch import Tensor, nn
from torch.func import functional_call

from mfwrap.fidelity import FidelityContext

# Producers of a fresh output whose backward does not read that output: adding to it in place is safe.
_IN_PLACE_SAFE = {"AddmmBackward0", "AddBackward0", "MmBackward0", "IndexSelectBackward0", "IndexAddBackward0"}


def _may_modify_in_place(out: Tensor) -> bool:
    return out._base is None and (out.grad_fn is None or type(out.grad_fn).__name__ in _IN_PLACE_SAFE)


def per_row_term(table: Tensor, rows: Tensor) -> Tensor:
    """``table[rows]`` (rows, C) for a small table (n_F, C) and many rows, without a gather.

    Built as a chain of ``torch.where`` over the n_F fidelities (static and few), which inductor
    fuses into the layer's epilogue: the forward is elementwise, and the backward with respect to
    ``table`` is one masked reduction over the rows per fidelity, with no atomics. A gather would
    backpropagate as a scatter-add of every row into n_F rows, atomic adds that all threads contend
    for; a one-hot matmul would materialise (rows, n_F). Values and gradients equal ``table[rows]``'s.
    """
    term = table[0].expand(rows.shape[0], -1)
    for fidelity in range(1, table.shape[0]):
        term = torch.where((rows == fidelity).unsqueeze(-1), table[fidelity], term)
    return term


def spread_columns(term: Tensor, channels: Tensor | None, width: int) -> Tensor:
    """``term`` (..., len(channels)) placed in ``channels`` of a zero (..., width) tensor; ``term``
    itself when ``channels`` is None (every column)."""
    if channels is None:
        return term
    return term.new_zeros(*term.shape[:-1], width).index_copy(-1, channels, term)


class FidelityLinear(nn.Module):
    r"""A linear layer whose input is extended by the one-hot fidelity of its row (paper Eq. 7):

    .. math::
        y = [W, W_F] \begin{bmatrix} a \\ \mathrm{onehot}(f) \end{bmatrix} + b
          = (W a + b) + W_F[:, f]

    ``linear`` is the backbone's own affine module, called unchanged: an ``nn.Linear``, or any
    module that is one linear layer on a (possibly factorised) concatenated input, such as the
    first layer of CHGNet's gated MLPs. ``fidelity_weight`` W_F (out_features, n_F) is its own
    parameter, zero at initialisation, so the layer then equals ``linear``. The product with the
    one-hot vector is a column gather (a per-row bias), never a matmul.

    ``row_kind`` names what the rows of the layer's *output* are (atoms, edges, undirected
    bonds, angles, structures); the shared :class:`FidelityContext` supplies their fidelities.
    Cost: with ``bias_path`` naming the bias parameter of ``linear`` (whose output is ``... + b``), the
    layer runs as ``linear`` with b + W_F[:, f0] in place of b (``torch.func.functional_call``),
    f0 the batch's most common fidelity, so a batch of one fidelity costs no extra pass over the
    output rows; rows of other fidelities then get W_F[:, f] − W_F[:, f0] added (``index_add``,
    in place when autograd allows it). Without ``bias_path``, W_F[:, f0] is added to all rows first.
    In the context's dense mode (compiled models) every row gets W_F[:, f] by :func:`per_row_term`
    instead, which needs no host synchronisation (inductor fuses the add into the layer).

    ``channels`` (optional) restricts the term to those output columns, e.g. the ``0e`` (scalar)
    columns of an e3nn layer whose other columns are vector or tensor components (a term there
    would break rotational symmetry); W_F is then (len(channels), n_F).
    """

    def __init__(
        self,
        linear: nn.Module,
        context: FidelityContext,
        row_kind: str,
        out_features: int,
        name: str = "",
        bias_path: str | None = None,
        channels: Tensor | None = None,
    ) -> None:
        super().__init__()
        reference = next(linear.parameters())
        self.linear = linear
        self.out_features = out_features
        self.register_buffer("channels", None if channels is None else channels.to(reference.device), persistent=False)
        width = out_features if channels is None else len(channels)
        self.fidelity_weight = nn.Parameter(
            torch.zeros(width, context.num_fidelities, dtype=reference.dtype, device=reference.device)
        )
        self.context = context
        self.row_kind = row_kind
        self.name = name
        self.bias_path = bias_path if channels is None else None  # a bias spans every column

    def forward(self, *args, **kwargs) -> Tensor:
        if self.context.dense:
            out = self.linear(*args, **kwargs)
            rows = self.context.rows(self.row_kind, out.shape[0], self.name)
            term = self._spread(per_row_term(self.fidelity_weight.t(), rows))
            return out + term.view(-1, *([1] * (out.dim() - 2)), out.shape[-1])
        uniform = self.context.uniform
        base, other, other_fidelity = (
            (uniform, None, None) if uniform is not None else self.context.majority(self.row_kind)
        )
        if self.bias_path is not None:
            bias = reduce(getattr, self.bias_path.split("."), self.linear) + self.fidelity_weight[:, base]
            out = functional_call(self.linear, {self.bias_path: bias}, args, kwargs)
            owned = _may_modify_in_place(out)
        else:
            out = self.linear(*args, **kwargs)
            out, owned = out + self._spread(self.fidelity_weight[:, base]), True
        self.context.rows(self.row_kind, out.shape[0], self.name)
        if other is None:
            return out
        delta = self._spread(
            (self.fidelity_weight - self.fidelity_weight[:, base : base + 1]).t().index_select(0, other_fidelity)
        )
        delta = delta.view(-1, *([1] * (out.dim() - 2)), out.shape[-1]).expand(-1, *out.shape[1:])
        return out.index_add_(0, other, delta) if owned else out.index_add(0, other, delta)

    def _spread(self, term: Tensor) -> Tensor:
        return spread_columns(term, self.channels, self.out_features)

    def draw_at_random(self) -> None:
        """Redraw W_F as one ``nn.Linear`` over the concatenated input [a, onehot(f)] would start:
        U(−1/√n, 1/√n), n the layer's input width (the input widths of its weight matrices, summed)
        plus n_F. A layer without weight matrices (e.g. e3nn's flat weights): N(0, s²), s the standard
        deviation of its weights. Global torch RNG."""
        matrices = [p for p in self.linear.parameters() if p.dim() == 2]
        with torch.no_grad():
            if matrices:
                bound = (sum(p.shape[-1] for p in matrices) + self.fidelity_weight.shape[1]) ** -0.5
                self.fidelity_weight.uniform_(-bound, bound)
            else:
                weights = torch.cat([p.detach().flatten() for p in self.linear.parameters()])
                self.fidelity_weight.normal_(0.0, float(weights.std()) if weights.numel() > 1 else 1.0)

    def folded(self, fidelity: int) -> nn.Module:
        """A copy of the wrapped layer computing ``W a + (b + W_F[:, f])`` for fidelity index ``fidelity``:
        the one-hot column in its bias (``bias_path``; else a parameter ``bias`` with one entry per column of
        the term, as an e3nn linear's, which spans its ``0e`` columns in order: the ``channels`` of a term
        restricted to them, or all columns of a pure ``0e`` output). ValueError for a layer without a bias,
        which cannot carry the column."""
        module = copy.deepcopy(self.linear)
        path = self.bias_path
        if path is None:  # e.g. an e3nn linear, whose bias spans exactly its 0e outputs
            bias = getattr(module, "bias", None)
            path = "bias" if isinstance(bias, Tensor) and bias.numel() == self.fidelity_weight.shape[0] else None
        if path is None:
            raise ValueError(
                f"cannot fold the one-hot fidelity column W_F[:, f] of {self.name} ({type(module).__name__}) into "
                "the plain model: the layer has no bias to hold it"
            )
        bias = reduce(getattr, path.split("."), module)
        with torch.no_grad():
            bias.add_(self.fidelity_weight[:, fidelity].detach().to(bias).view_as(bias))
        return module

    def add_fidelity(self, like: int) -> None:
        """Append a column for a new fidelity, equal to the column of fidelity ``like``."""
        weight = self.fidelity_weight.detach()
        self.fidelity_weight = nn.Parameter(torch.cat([weight, weight[:, like : like + 1]], dim=1))

    def extra_repr(self) -> str:
        columns = "" if self.channels is None else f", columns={len(self.channels)} of {self.out_features}"
        return f"fidelities={self.fidelity_weight.shape[1]}, rows={self.row_kind}{columns}"
