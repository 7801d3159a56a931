"""FidelityComposition (C) and reading / writing a backbone's per-element energies."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch_geometric.data import Data

from mfwrap.fidelity import FidelityContext
from mfwrap.mechanisms.composition import FidelityComposition, read_element_energies, write_element_energies


class ElementTable(nn.Module):
    def __init__(self):
        super().__init__()
        self.element_energies = nn.Parameter(torch.arange(1.0, 95.0), requires_grad=False)  # entry k: Z = k + 1


def test_read_and_write_both_layouts():
    table = ElementTable()
    weights = read_element_energies(table)
    assert float(weights[0]) == 0 and float(weights[26]) == 26.0  # index = Z
    write_element_energies(table, -weights)
    assert float(table.element_energies[25]) == -26.0
    atomref = nn.Embedding(100, 1)
    write_element_energies(atomref, weights)
    assert float(atomref.weight[8, 0].detach()) == 8.0 and torch.equal(read_element_energies(atomref), weights)
    with pytest.raises(TypeError, match="cannot read per-element energies"):
        read_element_energies(nn.Linear(94, 1))


@pytest.mark.parametrize("rows, shape", [("structure", ()), ("atom", (1,))])
def test_energy_is_the_sum_of_per_fidelity_element_weights(rows, shape):
    context = FidelityContext(2)
    initial = torch.zeros(95, dtype=torch.float64)
    initial[[3, 8]] = torch.tensor([-2.0, -5.0], dtype=torch.float64)
    composition = FidelityComposition(context, initial, row_kind=rows, shape=shape)
    with torch.no_grad():
        composition.element_energies[1, 8] = -7.0
    batch = Data(
        atomic_numbers=torch.tensor([3, 8, 8, 3, 8]),
        fidelity=torch.tensor([0, 1]),
        batch=torch.tensor([0, 0, 0, 1, 1]),
        cell=torch.zeros(2, 3, 3),
        edge_index=torch.zeros(2, 0, dtype=torch.long),
    )
    with context.bound(batch):
        out = composition("ignored argument")
    if rows == "structure":
        torch.testing.assert_close(out, torch.tensor([-12.0, -9.0]))
    else:
        torch.testing.assert_close(out, torch.tensor([[-2.0], [-5.0], [-5.0], [-2.0], [-7.0]]))
    composition.add_fidelity(1)
    assert float(composition.element_energies[2, 8]) == -7.0 and not composition.element_energies.requires_grad
