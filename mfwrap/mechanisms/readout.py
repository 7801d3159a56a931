"""R: a readout per fidelity (paper Eq. 9), as independent copies or as one shared readout with
a per-fidelity residual on each of its parameters."""

from __future__ import annotations

import abc
import copy

import torch
from torch import Tensor, nn
from torch.func import functional_call

from mfwrap.fidelity import FidelityContext


class _RoutedReadout(nn.Module, abc.ABC):
    """Routing shared by the readouts: each row i goes through ``apply_fidelity(f_i, rows)``.

    The rows are sorted by fidelity once per forward, each fidelity's readout sees only its own
    rows (no wasted compute), and the outputs are put back in the original order; a batch of one
    fidelity goes straight through its readout. In the context's dense mode (compiled models: no
    data-dependent sizes) every fidelity's readout sees every row and each row keeps its own
    fidelity's output, n_F times the readout's cost with no host synchronisation.
    """

    def __init__(self, context: FidelityContext, row_kind: str, name: str) -> None:
        super().__init__()
        self.context = context
        self.row_kind = row_kind
        self.name = name

    @abc.abstractmethod
    def apply_fidelity(self, fidelity: int, x: Tensor) -> Tensor:
        """The readout of fidelity ``fidelity`` applied to rows ``x``."""

    def forward(self, x: Tensor) -> Tensor:
        if self.context.dense:
            rows = self.context.rows(self.row_kind, x.shape[0], self.name)
            out = self.apply_fidelity(0, x)
            for f in range(
                1, self.context.num_fidelities
            ):  # where(), not a gather: inductor mis-strides gather's backward
                mine = (rows == f).view(-1, *([1] * (out.dim() - 1)))
                out = torch.where(mine, self.apply_fidelity(f, x), out)
            return out
        if self.context.uniform is not None:
            self.context.rows(self.row_kind, x.shape[0], self.name)
            return self.apply_fidelity(self.context.uniform, x)
        order, counts = self.context.groups(self.row_kind, x.shape[0], self.name)
        present = [f for f, count in enumerate(counts) if count]
        if len(present) <= 1:
            return self.apply_fidelity(present[0] if present else 0, x)
        chunks = torch.split(x.index_select(0, order), counts)
        sorted_out = torch.cat([self.apply_fidelity(f, chunks[f]) for f in present], dim=0)
        return torch.empty_like(sorted_out).index_copy(0, order, sorted_out)


class FidelityReadout(_RoutedReadout):
    r"""One independent copy of the readout per fidelity: :math:`y_i = L^{f_i}(x_i)` (the paper's R).

    ``readout`` must act row by row (output row i depends on input row i only), as the
    per-atom energy MLPs of every supported backbone do. All copies equal ``readout`` at
    initialisation; copy f is trained by the rows of fidelity f only.
    """

    def __init__(self, readout: nn.Module, context: FidelityContext, row_kind: str, name: str = "") -> None:
        super().__init__(context, row_kind, name)
        self.copies = nn.ModuleList([readout] + [self._copy(readout) for _ in range(context.num_fidelities - 1)])

    def apply_fidelity(self, fidelity: int, x: Tensor) -> Tensor:
        return self.copies[fidelity](x)

    def varying_parameters(self) -> list[nn.Parameter]:
        """The parameters that make fidelities differ (copies 1..; copy 0 is the reference)."""
        return [p for copy_ in self.copies[1:] for p in copy_.parameters()]

    def equalise(self) -> None:
        """Make every fidelity's readout equal to fidelity 0's."""
        with torch.no_grad():
            for other in self.copies[1:]:
                other.load_state_dict(self.copies[0].state_dict())

    def draw_at_random(self) -> None:
        """Redraw copies 1.. independently (``reset_parameters`` of each of their layers; global torch
        RNG), as separate readouts built from scratch would start; copy 0 keeps the backbone's weights."""
        for copy_ in self.copies[1:]:
            for module in copy_.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()

    def folded(self, fidelity: int) -> nn.Module:
        """A copy of the readout of fidelity index ``fidelity`` (copy f), a plain module."""
        return copy.deepcopy(self.copies[fidelity])

    def add_fidelity(self, like: int) -> None:
        """Append a copy for a new fidelity, equal to the copy of fidelity ``like``."""
        self.copies.append(self._copy(self.copies[like]))

    def _copy(self, module: nn.Module) -> nn.Module:
        """Deep copy that keeps sharing the context (fidelity layers inside a readout stay bound)."""
        return copy.deepcopy(module, {id(self.context): self.context})

    def extra_repr(self) -> str:
        return f"fidelities={len(self.copies)}, rows={self.row_kind}"


class ResidualFidelityReadout(_RoutedReadout):
    r"""One shared readout and a per-fidelity residual on each of its parameters:
    :math:`y_i = L(x_i;\ \theta + \delta_{f_i})`.

    Every row trains the shared parameters θ; the rows of fidelity f also train δ_f. The
    residuals start at zero, so every fidelity starts as ``readout``. It has the expressiveness
    of independent copies (θ + δ_f is any parameter vector) but the scarce fidelity's readout
    learns from every row of the batch, where an independent copy learns from its own rows only.
    ``readout`` must act row by row; its buffers are shared by all fidelities.
    """

    def __init__(self, readout: nn.Module, context: FidelityContext, row_kind: str, name: str = "") -> None:
        super().__init__(context, row_kind, name)
        self.shared = readout
        self.residuals = nn.ModuleList(
            [
                nn.ParameterList([nn.Parameter(torch.zeros_like(p)) for p in readout.parameters()])
                for _ in range(context.num_fidelities)
            ]
        )

    def apply_fidelity(self, fidelity: int, x: Tensor) -> Tensor:
        parameters = {name: p + d for (name, p), d in zip(self.shared.named_parameters(), self.residuals[fidelity])}
        return functional_call(self.shared, parameters, (x,))

    def varying_parameters(self) -> list[nn.Parameter]:
        """The parameters that make fidelities differ: every residual."""
        return [d for residual in self.residuals for d in residual]

    def equalise(self) -> None:
        """Make every fidelity's readout the shared one (residuals zero)."""
        with torch.no_grad():
            for d in self.varying_parameters():
                d.zero_()

    def draw_at_random(self) -> None:
        """Nothing to draw: a residual readout built from scratch also starts with zero residuals
        (the shared readout is the backbone's, drawn or pretrained)."""

    def folded(self, fidelity: int) -> nn.Module:
        """A copy of the shared readout with parameters θ + δ_f for fidelity index ``fidelity``, a plain module."""
        module = copy.deepcopy(self.shared)
        with torch.no_grad():
            for p, d in zip(module.parameters(), self.residuals[fidelity]):
                p.add_(d)
        return module

    def add_fidelity(self, like: int) -> None:
        """Append a residual for a new fidelity, equal to fidelity ``like``'s."""
        self.residuals.append(nn.ParameterList([nn.Parameter(d.detach().clone()) for d in self.residuals[like]]))

    def extra_repr(self) -> str:
        return f"fidelities={len(self.residuals)}, rows={self.row_kind}, shared + residual"


READOUTS = {"copies": FidelityReadout, "residual": ResidualFidelityReadout}  # MultiFidelity(readout=...)
