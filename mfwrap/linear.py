"""M: the one-hot-augmented linear layer of the multi-fidelity message functions."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

from mfwrap.fidelity import FidelityContext


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
    When the whole batch has one fidelity f and ``bias`` names the bias parameter of ``linear``
    (whose output is ``... + b``), the layer runs as ``linear`` with b + W_F[:, f] in place of b
    (``torch.func.functional_call``): no extra pass over the output rows.
    """

    def __init__(self, linear: nn.Module, context: FidelityContext, row_kind: str, out_features: int, name: str = "",
                 bias: str | None = None) -> None:
        super().__init__()
        reference = next(linear.parameters())
        self.linear = linear
        self.fidelity_weight = nn.Parameter(
            torch.zeros(out_features, context.num_fidelities, dtype=reference.dtype, device=reference.device)
        )
        self.context = context
        self.row_kind = row_kind
        self.name = name
        self.bias = bias

    def forward(self, *args, **kwargs) -> Tensor:
        uniform = self.context.uniform
        if uniform is not None and self.bias is not None:
            bias = self.linear.get_parameter(self.bias) + self.fidelity_weight[:, uniform]
            out = functional_call(self.linear, {self.bias: bias}, args, kwargs)
            self.context.rows(self.row_kind, out.shape[0], self.name)
            return out
        out = self.linear(*args, **kwargs)
        f = self.context.rows(self.row_kind, out.shape[0], self.name)
        if uniform is not None:
            return out + self.fidelity_weight[:, uniform]
        per_row = self.fidelity_weight.t().index_select(0, f)  # (rows, out), a fresh tensor
        if out.dim() == 2 and out.dtype == per_row.dtype:
            return per_row.add_(out)  # in place on our own gather: no second (rows, out) allocation
        return out + per_row.view(f.shape[0], *([1] * (out.dim() - 2)), out.shape[-1])

    def add_fidelity(self, like: int) -> None:
        """Append a column for a new fidelity, equal to the column of fidelity ``like``."""
        weight = self.fidelity_weight.detach()
        self.fidelity_weight = nn.Parameter(torch.cat([weight, weight[:, like : like + 1]], dim=1))

    def extra_repr(self) -> str:
        return f"fidelities={self.fidelity_weight.shape[1]}, rows={self.row_kind}"
