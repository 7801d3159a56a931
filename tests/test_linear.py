"""FidelityLinear equals the paper's concatenated one-hot layer [W, W_F] [a; onehot(f)] + b."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch_geometric.data import Data

from mfwrap.fidelity import FidelityContext
from mfwrap.mechanisms.linear import FidelityLinear


def _context(fidelity_of_atoms: list[int], num_fidelities: int = 3):
    atoms = torch.tensor(fidelity_of_atoms)
    batch = Data(
        atomic_numbers=torch.ones(len(atoms), dtype=torch.long),
        fidelity=atoms,
        batch=torch.arange(len(atoms)),
        cell=torch.zeros(len(atoms), 3, 3),
        edge_index=torch.zeros(2, 0, dtype=torch.long),
    )
    context = FidelityContext(num_fidelities)
    context.kinds = {"atom"}
    return context, batch


@pytest.mark.parametrize("bias", [True, False])
def test_equals_linear_on_input_concatenated_with_one_hot(bias):
    torch.manual_seed(0)
    linear = nn.Linear(5, 4, bias=bias)
    context, batch = _context([0, 2, 1, 2])
    layer = FidelityLinear(linear, context, "atom", 4, bias_path="bias" if bias else None)
    a = torch.randn(4, 5)
    with context.bound(batch):
        assert torch.equal(layer(a), linear(a))  # W_F = 0 at initialisation
        with torch.no_grad():
            layer.fidelity_weight.normal_()
        concatenated = torch.cat([a, nn.functional.one_hot(batch.fidelity, 3).float()], dim=1)
        weight = torch.cat([linear.weight, layer.fidelity_weight], dim=1)
        expected = concatenated @ weight.t() + (linear.bias if bias else 0)
        torch.testing.assert_close(layer(a), expected)
        three_d = torch.randn(4, 2, 5)  # extra middle dimension: one fidelity per leading row
        torch.testing.assert_close(
            layer(three_d), linear(three_d) + layer.fidelity_weight.t()[batch.fidelity].unsqueeze(1)
        )


def test_add_fidelity_copies_a_column():
    context, _ = _context([0])
    layer = FidelityLinear(nn.Linear(2, 3), context, "atom", 3)
    with torch.no_grad():
        layer.fidelity_weight.normal_()
    layer.add_fidelity(1)
    assert layer.fidelity_weight.shape == (3, 4) and torch.equal(
        layer.fidelity_weight[:, 3], layer.fidelity_weight[:, 1]
    )


@pytest.mark.parametrize("bias", [True, False])
def test_one_fidelity_batch_folds_w_f_into_the_bias(bias):
    torch.manual_seed(1)
    linear = nn.Linear(5, 4, bias=bias)
    context, batch = _context([1, 1, 1])
    layer = FidelityLinear(linear, context, "atom", 4, bias_path="bias" if bias else None)
    with torch.no_grad():
        layer.fidelity_weight.normal_()
    a = torch.randn(3, 5)
    with context.bound(batch, uniform=1):
        folded = layer(a)
    with context.bound(batch):
        gathered = layer(a)
    torch.testing.assert_close(folded, gathered)
    folded.sum().backward()  # the folded bias still trains W_F[:, 1] only
    assert (
        float(layer.fidelity_weight.grad[:, 1].abs().sum()) > 0
        and float(layer.fidelity_weight.grad[:, [0, 2]].abs().sum()) == 0
    )
    assert linear.bias is None or torch.equal(linear.bias, layer.linear.bias)  # the module's own bias is untouched


@pytest.mark.parametrize("bias", ["bias", None])
def test_gradients_of_the_mixed_fidelity_path(bias):
    torch.manual_seed(2)
    linear = nn.Linear(3, 2).double()
    context, batch = _context([1, 0, 1, 1, 2])
    layer = FidelityLinear(linear, context, "atom", 2, bias_path=bias).double()
    a = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)

    def f(a, w_f, b):
        with torch.no_grad():
            layer.fidelity_weight.copy_(w_f)
        with context.bound(batch):
            return torch.func.functional_call(layer, {"fidelity_weight": w_f, "linear.bias": b}, (a,))

    w_f = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (a, w_f, b))
    assert torch.autograd.gradgradcheck(f, (a, w_f, b))


def test_per_row_term_equals_the_gather_and_its_gradient():
    """The dense mode's W_F[:, f_r] (a where chain) has the gather's values and table gradient."""
    from mfwrap.mechanisms.linear import per_row_term

    generator = torch.Generator().manual_seed(0)
    table = torch.randn(3, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    rows = torch.randint(0, 3, (40,), generator=generator)
    weights = torch.randn(40, 5, dtype=torch.float64, generator=generator)
    term = per_row_term(table, rows)
    torch.testing.assert_close(term, table.detach().index_select(0, rows), rtol=0, atol=0)
    (grad,) = torch.autograd.grad((term * weights).sum(), table)
    expected = torch.zeros_like(table).index_add(0, rows, weights)
    torch.testing.assert_close(grad, expected)
