"""Every scatter backend against a dense one-hot oracle and against native torch, to second order.

Cases are (backend, device) pairs runnable in this process. Triton on CPU needs the interpreter
(TRITON_INTERPRET=1 before triton's import), so in a normal run test_triton_interpreted.py runs
the "triton and cpu" cases of this file in a subprocess with it set. Interpreted kernels are slow:
inputs stay tiny.
"""

from __future__ import annotations

import pytest
import torch

from mfwrap import ops
from mfwrap.ops.backend import available_backends, triton_interpreted


def _cases() -> list:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    cases = []
    for backend in available_backends():
        for device in devices:
            if backend == "triton" and device == "cpu" and not triton_interpreted():
                continue  # run by test_triton_interpreted.py
            cases.append(pytest.param((backend, device), id=f"{backend}-{device}"))
    return cases


CASES = _cases()


@pytest.fixture(params=CASES)
def case(request):
    backend, device = request.param
    with ops.use_backend(backend):
        assert ops.get_backend(device) == backend
        yield backend, torch.device(device)


def _oracle(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Σ by a dense one-hot matrix product, in float64 on CPU: shares no code with the backends."""
    one_hot = torch.nn.functional.one_hot(index.cpu(), dim_size).to(torch.float64)
    rows = src.detach().cpu().to(torch.float64).reshape(src.shape[0], -1)
    return (one_hot.T @ rows).reshape(dim_size, *src.shape[1:])


def _rows(device, num_rows=7, dim_size=4, features=(2,), dtype=torch.float64, seed=0):
    """index (E,) into [0, dim_size), and two (E, *features) tensors: src and a weight."""
    gen = torch.Generator().manual_seed(seed)
    index = torch.randint(0, dim_size, (num_rows,), generator=gen)
    src = torch.randn(num_rows, *features, generator=gen, dtype=dtype)
    weight = torch.randn(num_rows, *features, generator=gen, dtype=dtype)
    return [t.to(device) for t in (index, src, weight)]


def _squared_sum(index, dim_size):
    """(src, weight) -> scatter_sum(src ⊙ weight)²: its derivatives to any order are non-trivial."""
    return lambda src, weight: ops.scatter_sum(src * weight, index, dim_size) ** 2


def _derivatives(fn, inputs):
    """Output, first derivatives (random cotangent) and second derivatives (random direction)."""
    gen = torch.Generator().manual_seed(1)
    out = fn(*inputs)
    cotangent = torch.randn(out.shape, generator=gen, dtype=out.dtype).to(out.device)
    first = torch.autograd.grad(out, inputs, cotangent, create_graph=True)
    directional = sum((g * torch.randn(g.shape, generator=gen, dtype=g.dtype).to(g.device)).sum() for g in first)
    second = torch.autograd.grad(directional, inputs)
    return [out, *first, *second]


@pytest.mark.parametrize("features", [(), (3,), (2, 3)], ids=["1d", "2d", "3d"])
def test_values_equal_dense_oracle(case, features):
    backend, device = case
    index, src, _ = _rows(device, num_rows=9, dim_size=5, features=features)
    torch.testing.assert_close(ops.scatter_sum(src, index, 5).cpu(), _oracle(src, index, 5))


def test_first_and_second_derivatives_equal_native_torch(case):
    backend, device = case
    index, src, weight = _rows(device)
    inputs = [t.clone().requires_grad_(True) for t in (src, weight)]
    got = _derivatives(_squared_sum(index, 4), inputs)
    with ops.use_backend("torch"):
        reference = _derivatives(_squared_sum(index.cpu(), 4), [t.detach().cpu().requires_grad_(True) for t in inputs])
    for g, r in zip(got, reference):
        torch.testing.assert_close(g.detach().cpu(), r.detach(), msg=backend)


def test_gradcheck_and_gradgradcheck(case):
    backend, device = case
    # interpreted kernels: fast mode (random projections); the test above compares in full
    fast = backend == "triton" and device.type == "cpu"
    index, src, weight = _rows(device, num_rows=5, dim_size=3)
    inputs = [t.clone().requires_grad_(True) for t in (src, weight)]
    assert torch.autograd.gradcheck(_squared_sum(index, 3), inputs, fast_mode=fast)
    assert torch.autograd.gradgradcheck(_squared_sum(index, 3), inputs, fast_mode=fast)


def test_empty_and_oversized_outputs(case):
    backend, device = case
    empty_index = torch.zeros(0, dtype=torch.long, device=device)
    for dim_size in (0, 3):
        empty = torch.zeros(0, 4, device=device, requires_grad=True)
        out = ops.scatter_sum(empty, empty_index, dim_size)
        assert out.shape == (dim_size, 4) and not out.any()
        (grad,) = torch.autograd.grad(out.sum(), empty)
        assert grad.shape == (0, 4)
    # dim_size far beyond the largest index: the tail rows are zero
    index, src, _ = _rows(device, num_rows=6, dim_size=2)
    expected = _oracle(src, index, 8)
    torch.testing.assert_close(ops.scatter_sum(src, index, 8).cpu(), expected)
    assert not expected[2:].any()
    # zero features
    assert ops.scatter_sum(torch.zeros(6, 0, device=device), index, 3).shape == (3, 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_low_precision_values(case, dtype):
    backend, device = case
    index, src, _ = _rows(device, num_rows=12, dim_size=4, features=(5,), dtype=dtype)
    tol = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    out = ops.scatter_sum(src, index, 4)
    assert out.dtype == dtype
    torch.testing.assert_close(out.cpu().double(), _oracle(src, index, 4), rtol=tol, atol=tol)


def test_scatter_sum_under_torch_deterministic_mode(case):
    """Triton then sorts the rows by destination instead of using atomics: run-to-run identical bits."""
    backend, device = case
    index, src, _ = _rows(device, num_rows=40, dim_size=5, features=(3,), dtype=torch.float32)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first, second = (ops.scatter_sum(src, index, 5) for _ in range(2))
        empty = ops.scatter_sum(src[:0], index[:0], 5)
    finally:
        torch.use_deterministic_algorithms(previous)
    assert torch.equal(first, second)
    torch.testing.assert_close(first.cpu().double(), _oracle(src, index, 5), rtol=1e-5, atol=1e-5)
    assert empty.shape == (5, 3) and not empty.any()


def test_shape_errors(case):
    backend, device = case
    index, src, _ = _rows(device)
    with pytest.raises(ValueError, match="scatter_sum"):
        ops.scatter_sum(src, index[:-1], 4)


if torch.cuda.is_available():

    @pytest.mark.parametrize("backend", available_backends())
    def test_no_host_device_synchronisation_on_cuda(backend):
        """Backend choice, kernels and backward (to second order) never wait for the GPU."""
        index, src, weight = _rows("cuda", num_rows=50, dim_size=8)
        inputs = [t.requires_grad_(True) for t in (src, weight)]
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            with ops.use_backend(backend):
                (grad, _) = torch.autograd.grad(_squared_sum(index, 8)(*inputs).sum(), inputs, create_graph=True)
                torch.autograd.grad(grad.sum(), inputs)
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_float64_accumulation_keeps_long_totals_exact(case):
    """scatter_sum_float64: 20,000 float32 'atom energies' near −7.6 eV summed into 2 structures (2,000
    under the slow Triton interpreter). A float32 running sum drifts far beyond one float32 rounding of
    the total; float64 accumulation stays within it, keeps the dtype, and passes gradients (ones) through."""
    backend, device = case
    rows = 2_000 if backend == "triton" and device.type == "cpu" else 20_000
    gen = torch.Generator().manual_seed(5)
    energies = (-7.6 + 0.3 * torch.randn(rows, generator=gen)).to(device=device, dtype=torch.float32).requires_grad_()
    index = (torch.arange(rows) % 2).to(device)
    exact = _oracle(energies, index, 2)
    total = ops.scatter_sum_float64(energies, index, 2)
    assert total.dtype == torch.float32
    one_rounding = exact.abs() * 2.0**-24
    assert ((total.detach().cpu().double() - exact).abs() <= one_rounding).all()
    if rows == 20_000:  # the plain float32 sum is the problem this solves
        drift = (ops.scatter_sum(energies.detach(), index, 2).cpu().double() - exact).abs()
        assert (drift > 8 * one_rounding).any()
    total.sum().backward()
    assert energies.grad.dtype == torch.float32 and bool((energies.grad == 1).all())
