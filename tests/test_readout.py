"""FidelityReadout: each row goes through its own fidelity's copy, and only through it."""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.data import Data

from mfwrap.fidelity import FidelityContext
from mfwrap.mechanisms.readout import FidelityReadout


class CountingMLP(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Linear(4, 8), nn.SiLU(), nn.Linear(8, 1))
        self.rows_seen = 0

    def forward(self, x):
        self.rows_seen += x.shape[0]
        return super().forward(x)


def _bound(context, fidelities):
    f = torch.tensor(fidelities)
    batch = Data(atomic_numbers=torch.ones(len(f), dtype=torch.long), fidelity=f, batch=torch.arange(len(f)),
                 cell=torch.zeros(len(f), 3, 3), edge_index=torch.zeros(2, 0, dtype=torch.long))
    return context.bound(batch)


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
