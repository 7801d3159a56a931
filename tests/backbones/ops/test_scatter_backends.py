"""Every scatter backend against a dense one-hot oracle and against each other, to second order.

Cases are (backend, device) pairs runnable in this process. Triton on CPU needs the interpreter
(TRITON_INTERPRET=1 before triton's import), so in a normal run test_triton_interpreted.py runs
the "triton and cpu" cases of this file in a subprocess with it set. Interpreted kernels are slow:
inputs stay tiny.
"""

from __future__ import annotations

import pytest
import torch

from backbones import ops
from backbones.ops.backend import available_backends, triton_interpreted


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


def _graph(device, num_rows=7, dim_size=4, num_nodes=3, features=(2,), dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    index = torch.randint(0, dim_size, (num_rows,), generator=gen)
    source = torch.randint(0, num_nodes, (num_rows,), generator=gen)
    src = torch.randn(num_rows, *features, generator=gen, dtype=dtype)
    x = torch.randn(num_nodes, *features, generator=gen, dtype=dtype)
    weight = torch.randn(num_rows, *features, generator=gen, dtype=dtype)
    return [t.to(device) for t in (index, source, src, x, weight)]


def _ops(index, source, dim_size, num_nodes):
    """op name -> function of (src, x, weight) giving a tensor whose derivatives are non-trivial."""
    csr = ops.CSR.from_index(index, dim_size)
    gather_csr = ops.CSR.from_index(source, num_nodes)
    return {
        "scatter_sum": lambda src, x, w: ops.scatter_sum(src * w, index, dim_size) ** 2,
        "gather": lambda src, x, w: ops.gather(x, source) ** 2 * w,
        "segment_sum": lambda src, x, w: ops.segment_sum(src * w, csr) ** 2,
        "segment_gather": lambda src, x, w: ops.segment_gather(x, gather_csr) ** 2 * w,
        "gather_mul_segment_sum": lambda src, x, w: ops.gather_mul_segment_sum(x, w, csr, gather_csr) ** 2,
    }


def _derivatives(fn, inputs):
    """Output, first derivatives (random cotangent) and second derivatives (random direction)."""
    gen = torch.Generator().manual_seed(1)
    out = fn(*inputs)
    cotangent = torch.randn(out.shape, generator=gen, dtype=out.dtype).to(out.device)
    first = torch.autograd.grad(out, inputs, cotangent, create_graph=True, allow_unused=True, materialize_grads=True)
    directional = sum((g * torch.randn(g.shape, generator=gen, dtype=g.dtype).to(g.device)).sum() for g in first)
    second = torch.autograd.grad(directional, inputs, allow_unused=True, materialize_grads=True)
    return [out, *first, *second]


@pytest.mark.parametrize("features", [(), (3,), (2, 3)], ids=["1d", "2d", "3d"])
def test_values_equal_dense_oracle(case, features):
    backend, device = case
    index, source, src, x, weight = _graph(device, num_rows=9, dim_size=5, features=features)
    csr, gather_csr = ops.CSR.from_index(index, 5), ops.CSR.from_index(source, 3)
    expected = _oracle(src, index, 5)
    torch.testing.assert_close(ops.scatter_sum(src, index, 5).cpu(), expected)
    torch.testing.assert_close(ops.segment_sum(src, csr).cpu(), expected)
    messages = weight * x[source]
    torch.testing.assert_close(ops.gather_mul_segment_sum(x, weight, csr, gather_csr).cpu(), _oracle(messages, index, 5))
    row_weight = weight.reshape(9, -1)[:, 0].contiguous()
    messages = row_weight.reshape(9, *[1] * len(features)) * x[source]
    torch.testing.assert_close(ops.gather_mul_segment_sum(x, row_weight, csr, gather_csr).cpu(), _oracle(messages, index, 5))


def test_first_and_second_derivatives_equal_native_torch(case):
    backend, device = case
    index, source, src, x, weight = _graph(device)
    for name, fn in _ops(index, source, 4, 3).items():
        inputs = [t.clone().requires_grad_(True) for t in (src, x, weight)]
        got = _derivatives(fn, inputs)
        with ops.use_backend("torch"):
            reference = _derivatives(fn, [t.detach().cpu().requires_grad_(True) for t in inputs])
        for g, r in zip(got, reference):
            torch.testing.assert_close(g.detach().cpu(), r.detach(), msg=f"{backend} {name}")


def test_gradcheck_and_gradgradcheck(case):
    backend, device = case
    # interpreted kernels: fast mode (random projections); the test above compares in full
    fast = backend == "triton" and device.type == "cpu"
    index, source, src, x, weight = _graph(device, num_rows=5, dim_size=3, num_nodes=2)
    for name, fn in _ops(index, source, 3, 2).items():
        inputs = [t.clone().requires_grad_(True) for t in (src, x, weight)]
        assert torch.autograd.gradcheck(fn, inputs, fast_mode=fast), name
        assert torch.autograd.gradgradcheck(fn, inputs, fast_mode=fast), name


def test_empty_and_oversized_outputs(case):
    backend, device = case
    empty_index = torch.zeros(0, dtype=torch.long, device=device)
    for dim_size in (0, 3):
        empty = torch.zeros(0, 4, device=device, requires_grad=True)
        csr = ops.CSR.from_index(empty_index, dim_size)
        for out in (ops.scatter_sum(empty, empty_index, dim_size), ops.segment_sum(empty, csr)):
            assert out.shape == (dim_size, 4) and not out.any()
            (grad,) = torch.autograd.grad(out.sum(), empty)
            assert grad.shape == (0, 4)
    # dim_size far beyond the largest index: the tail rows are zero
    index, _, src, _, _ = _graph(device, num_rows=6, dim_size=2)
    expected = _oracle(src, index, 8)
    torch.testing.assert_close(ops.scatter_sum(src, index, 8).cpu(), expected)
    torch.testing.assert_close(ops.segment_sum(src, ops.CSR.from_index(index, 8)).cpu(), expected)
    assert not expected[2:].any()
    # zero features
    src = torch.zeros(6, 0, device=device)
    assert ops.segment_sum(src, ops.CSR.from_index(index, 3)).shape == (3, 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_low_precision_values(case, dtype):
    backend, device = case
    index, source, src, x, weight = _graph(device, num_rows=12, dim_size=4, features=(5,), dtype=dtype)
    csr, gather_csr = ops.CSR.from_index(index, 4), ops.CSR.from_index(source, 3)
    tol = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    for out in (ops.scatter_sum(src, index, 4), ops.segment_sum(src, csr)):
        assert out.dtype == dtype
        torch.testing.assert_close(out.cpu().double(), _oracle(src, index, 4), rtol=tol, atol=tol)
    fused = ops.gather_mul_segment_sum(x, weight, csr, gather_csr)
    torch.testing.assert_close(fused.cpu().double(), _oracle(weight.double() * x.double()[source], index, 4),
                               rtol=tol, atol=tol)


def test_presorted_csr_equals_sorted_one(case):
    backend, device = case
    index, _, src, _, _ = _graph(device, num_rows=10, dim_size=4)
    order = torch.argsort(index.cpu(), stable=True).to(device)
    presorted = ops.CSR.from_index(index[order], 4, is_sorted=True)
    assert presorted.perm is None
    torch.testing.assert_close(ops.segment_sum(src[order], presorted), ops.segment_sum(src, ops.CSR.from_index(index, 4)))


def test_scatter_sum_under_torch_deterministic_mode(case):
    """Triton then sorts into a CSR instead of using atomics: run-to-run identical bits."""
    backend, device = case
    index, _, src, _, _ = _graph(device, num_rows=40, dim_size=5, features=(3,), dtype=torch.float32)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first, second = (ops.scatter_sum(src, index, 5) for _ in range(2))
    finally:
        torch.use_deterministic_algorithms(previous)
    assert torch.equal(first, second)
    torch.testing.assert_close(first.cpu().double(), _oracle(src, index, 5), rtol=1e-5, atol=1e-5)


def test_shape_errors(case):
    backend, device = case
    index, source, src, x, weight = _graph(device)
    with pytest.raises(ValueError, match="scatter_sum"):
        ops.scatter_sum(src, index[:-1], 4)
    csr, gather_csr = ops.CSR.from_index(index, 4), ops.CSR.from_index(source, 3)
    with pytest.raises(ValueError, match="weight"):
        ops.gather_mul_segment_sum(x, weight[:, :1], csr, gather_csr)
    with pytest.raises(ValueError, match="gather_csr"):
        ops.gather_mul_segment_sum(x, weight, csr, csr)


if torch.cuda.is_available():

    @pytest.mark.parametrize("backend", available_backends())
    def test_no_host_device_synchronisation_on_cuda(backend):
        """Backend choice, CSR building, kernels and backward never wait for the GPU."""
        index, source, src, x, weight = _graph("cuda", num_rows=50, dim_size=8, num_nodes=6)
        inputs = [t.requires_grad_(True) for t in (src, x, weight)]
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            with ops.use_backend(backend):
                for fn in _ops(index, source, 8, 6).values():
                    torch.autograd.grad(fn(*inputs).sum(), inputs, allow_unused=True)
        finally:
            torch.cuda.set_sync_debug_mode("default")
