"""The readouts of R: each row goes through its own fidelity's readout, and only through it;
independent copies (FidelityReadout) or a shared readout plus residuals (ResidualFidelityReadout)."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch_geometric.data import Data

from mfwrap.fidelity import FidelityContext
from mfwrap.mechanisms.readout import FidelityReadout, ResidualFidelityReadout


class CountingMLP(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Linear(4, 8), nn.SiLU(), nn.Linear(8, 1))
        self.rows_seen = 0

    def forward(self, x):
        self.rows_seen += x.shape[0]
        return super().forward(x)


def _bound_batch(fidelities):
    f = torch.tensor(fidelities)
    return Data(
        atomic_numbers=torch.ones(len(f), dtype=torch.long),
        fidelity=f,
        batch=torch.arange(len(f)),
        cell=torch.zeros(len(f), 3, 3),
        edge_index=torch.zeros(2, 0, dtype=torch.long),
    )


def _bound(context, fidelities):
    return context.bound(_bound_batch(fidelities))


def _bound_apply(readout, context, fidelities, x):
    with _bound(context, fidelities):
        return readout(x)


def test_rows_are_routed_to_their_copy_without_wasted_compute():
    torch.manual_seed(0)
    context = FidelityContext(3)
    readout = FidelityReadout(CountingMLP(), context, "atom")
    x = torch.randn(6, 4)
    fidelities = [2, 0, 2, 1, 0, 2]
    with _bound(context, fidelities):
        torch.testing.assert_close(readout(x), readout.copies[0](x))  # equal copies at initialisation
    with torch.no_grad():
        for copy in readout.copies[1:]:
            for p in copy.parameters():
                p.add_(torch.randn_like(p))
    for copy in readout.copies:
        copy.rows_seen = 0
    with _bound(context, fidelities):
        out = readout(x)
    expected = torch.stack([readout.copies[f](x[i : i + 1])[0] for i, f in enumerate(fidelities)])
    torch.testing.assert_close(out, expected)
    assert [c.rows_seen for c in readout.copies] == [2 + 2, 1 + 1, 3 + 3]  # 2nd term: the reference above
    out.sum().backward()
    assert all(p.grad is not None for c in readout.copies for p in c.parameters())


def test_one_fidelity_batch_skips_routing_and_add_fidelity_copies():
    context = FidelityContext(2)
    readout = FidelityReadout(CountingMLP(), context, "atom")
    with torch.no_grad():
        readout.copies[1][0].bias.add_(1.0)
    readout.add_fidelity(1)
    context.num_fidelities = 3
    x = torch.randn(3, 4)
    with _bound(context, [2, 2, 2]):
        torch.testing.assert_close(readout(x), readout.copies[1](x))
    assert readout.copies[2].rows_seen == 3 and readout.copies[0].rows_seen == 0


def _residual_readout(num_fidelities: int, perturbed: bool = True) -> tuple[ResidualFidelityReadout, FidelityContext]:
    torch.manual_seed(0)
    context = FidelityContext(num_fidelities)
    readout = ResidualFidelityReadout(CountingMLP(), context, "atom")
    with torch.no_grad():
        for d in readout.varying_parameters() if perturbed else ():
            d.add_(0.5 * torch.randn_like(d))
    return readout, context


def _with_parameters(module: nn.Module, parameters: list[torch.Tensor]) -> nn.Module:
    """A plain copy of ``module`` whose parameters are ``parameters`` (in ``parameters()`` order)."""
    copy_ = copy.deepcopy(module)
    with torch.no_grad():
        for p, value in zip(copy_.parameters(), parameters):
            p.copy_(value)
    return copy_


def test_residual_readout_starts_as_the_shared_one_and_computes_theta_plus_delta_per_row():
    fresh, context = _residual_readout(3, perturbed=False)
    x = torch.randn(6, 4)
    fidelities = [2, 0, 2, 1, 0, 2]
    with _bound(context, fidelities):
        torch.testing.assert_close(fresh(x), fresh.shared(x))  # zero residuals at initialisation
    readout, context = _residual_readout(3)
    with _bound(context, fidelities):
        out = readout(x)
    plain = [
        _with_parameters(readout.shared, [p + d for p, d in zip(readout.shared.parameters(), readout.residuals[f])])
        for f in range(3)
    ]
    expected = torch.stack([plain[f](x[i : i + 1])[0] for i, f in enumerate(fidelities)])
    torch.testing.assert_close(out, expected)
    with context.bound(_bound_batch(fidelities), dense=True):  # the compiled models' dense mode: same values
        torch.testing.assert_close(readout(x), expected)


def test_every_row_trains_the_shared_readout_and_only_its_own_residual():
    readout, context = _residual_readout(3)
    x = torch.randn(5, 4)
    with _bound(context, [0, 2, 0, 2, 0]):  # no row of fidelity 1
        readout(x).pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in readout.shared.parameters())
    assert all(d.grad is None for d in readout.residuals[1])
    # a row's gradient reaches θ and δ_f equally (∂/∂θ = ∂/∂δ_f); summed over fidelities for θ
    for p, d0, d2 in zip(readout.shared.parameters(), readout.residuals[0], readout.residuals[2]):
        torch.testing.assert_close(p.grad, d0.grad + d2.grad)


def test_residual_readout_add_fidelity_and_equalise():
    readout, context = _residual_readout(2)
    readout.add_fidelity(1)
    context.num_fidelities = 3
    x = torch.randn(4, 4)
    with _bound(context, [2, 2, 2, 2]):
        torch.testing.assert_close(readout(x), _bound_apply(readout, context, [1, 1, 1, 1], x))
    readout.equalise()
    with _bound(context, [0, 1, 2, 2]):
        torch.testing.assert_close(readout(x), readout.shared(x))
