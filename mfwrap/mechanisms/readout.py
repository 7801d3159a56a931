"""R: one copy of the backbone's readout network per fidelity (paper Eq. 9)."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from mfwrap.fidelity import FidelityContext


class FidelityReadout(nn.Module):
    r"""Routes each row to the readout copy of its fidelity: :math:`y_i = L^{f_i}(x_i)`.

    ``readout`` must act row by row (output row i depends on input row i only), as the
    per-atom energy MLPs of every supported backbone do. All copies equal ``readout`` at
    initialisation. The rows are sorted by fidelity once per forward, each copy sees only its
    own rows (no wasted compute), and the outputs are put back in the original order; a batch
    of one fidelity goes straight through its copy. In the context's dense mode (compiled
    models: no data-dependent sizes) every copy sees every row and each row keeps its own copy's
    output, n_F times the readout's cost with no host synchronisation.
    """

    def __init__(self, readout: nn.Module, context: FidelityContext, row_kind: str, name: str = "") -> None:
        super().__init__()
        self.context = context
        self.copies = nn.ModuleList([readout] + [self._copy(readout) for _ in range(context.num_fidelities - 1)])
        self.row_kind = row_kind
        self.name = name

    def forward(self, x: Tensor) -> Tensor:
        if self.context.dense:
            rows = self.context.rows(self.row_kind, x.shape[0], self.name)
            out = self.copies[0](x)
            for f in range(1, len(self.copies)):  # where(), not a gather: inductor mis-strides gather's backward
                mine = (rows == f).view(-1, *([1] * (out.dim() - 1)))
                out = torch.where(mine, self.copies[f](x), out)
            return out
        if self.context.uniform is not None:
            self.context.rows(self.row_kind, x.shape[0], self.name)
            return self.copies[self.context.uniform](x)
        order, counts = self.context.groups(self.row_kind, x.shape[0], self.name)
        present = [f for f, count in enumerate(counts) if count]
        if len(present) <= 1:
            return self.copies[present[0] if present else 0](x)
        chunks = torch.split(x.index_select(0, order), counts)
        sorted_out = torch.cat([self.copies[f](chunks[f]) for f in present], dim=0)
        return torch.empty_like(sorted_out).index_copy(0, order, sorted_out)

    def draw_at_random(self) -> None:
        """Redraw copies 1.. independently (``reset_parameters`` of each of their layers; global torch
        RNG), as separate readouts built from scratch would start; copy 0 keeps the backbone's weights."""
        for copy_ in self.copies[1:]:
            for module in copy_.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()

    def add_fidelity(self, like: int) -> None:
        """Append a copy for a new fidelity, equal to the copy of fidelity ``like``."""
        self.copies.append(self._copy(self.copies[like]))

    def _copy(self, module: nn.Module) -> nn.Module:
        """Deep copy that keeps sharing the context (fidelity layers inside a readout stay bound)."""
        return copy.deepcopy(module, {id(self.context): self.context})

    def extra_repr(self) -> str:
        return f"fidelities={len(self.copies)}, rows={self.row_kind}"
