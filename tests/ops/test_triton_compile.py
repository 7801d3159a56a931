"""The Triton kernels compile ahead of time for NVIDIA GPUs (front end, PTX, cubin): no GPU needed.

The interpreter (test_triton_interpreted.py) checks what the kernels compute but accepts code
the GPU compiler rejects; this checks the compiler's side, with the argument types and
compile-time flags the launchers in mfwrap/ops/triton_kernels.py use.
"""

from __future__ import annotations

import pytest

from mfwrap.ops.backend import is_available, triton_interpreted

if is_available("triton") and not triton_interpreted():
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from mfwrap.ops import triton_kernels

    def _compile(kernel, types: dict, constexprs: dict, capability: int):
        signature = {name: types.get(name, "constexpr") for name in kernel.arg_names}
        source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
        compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32), options=triton_kernels._OPTIONS)
        assert len(compiled.asm["cubin"]) > 1000
        return compiled

    @pytest.fixture(autouse=True)
    def fresh_cache(tmp_path, monkeypatch):
        monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))

    @pytest.mark.parametrize(("dtype", "capability"), [("fp32", 90), ("fp64", 90), ("bf16", 90), ("fp32", 80)])
    def test_sorted_segment_kernel_compiles(dtype, capability):
        pointer = f"*{dtype}"
        types = {"src_ptr": pointer, "out_ptr": pointer, "seg_ptr": "*i64", "perm_ptr": "*i64", "num_features": "i32"}
        constexprs = {"ACC_DTYPE": tl.float64 if dtype == "fp64" else tl.float32, "BLOCK_E": 32, "BLOCK_F": 64}
        _compile(triton_kernels._sorted_segment_kernel, types, constexprs, capability)

    @pytest.mark.parametrize("dtype", ["fp32", "fp64"])
    def test_atomic_scatter_kernel_compiles(dtype):
        types = {
            "src_ptr": f"*{dtype}",
            "index_ptr": "*i64",
            "out_ptr": f"*{dtype}",
            "num_rows": "i32",
            "num_features": "i32",
            "dim_size": "i32",
        }
        _compile(triton_kernels._scatter_atomic_kernel, types, {"BLOCK_E": 32, "BLOCK_F": 64}, 90)
