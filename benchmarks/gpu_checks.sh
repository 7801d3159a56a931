#!/usr/bin/env bash
# Every GPU check of one short lease, most valuable first, each bounded so that a slow stage cannot
# take the others' time; logs and JSON go to $OUT (default /tmp/gpu_checks).
#   1. the scatter backends' CUDA paths and Triton kernels compiled for the GPU (tests/ops)
#   2. the benchmark suite's real medium runs on the GPU (benchmarks/suite_gpu.py; SUITE_FLAGS=--eager
#      where torch.compile of the training step fails, as on torch 2.11)
#   3. native CHGNet vs official chgnet, scatter alone and end to end (benchmarks/speed_gpu.py)
# Packages the GPU machine lacks (ase, pymatgen, chgnet, ...) travel as wheels in .whl/ (see
# /work/.library/device/README.md); the python3 there brings torch, torch_geometric and triton.
set -u
OUT=${OUT:-/tmp/gpu_checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MFWRAP_CACHE=/tmp/mfwrap_cache
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import torch, torch_geometric, ase, pymatgen.core, chgnet; print('torch', torch.__version__, 'pyg', torch_geometric.__version__, torch.cuda.get_device_name())"
timeout "${OPS_S:-90}" python3 -m pytest -q -p no:cacheprovider tests/ops 2>&1 | tee "$OUT/ops_tests.log"
timeout "${SUITE_S:-330}" python3 benchmarks/suite_gpu.py --root /tmp/suite_gpu --out "$OUT/suite_gpu.json" --at-once "${AT_ONCE:-4}" ${SUITE_FLAGS:-} 2>&1 | tee "$OUT/suite_gpu.log"
tar czf "$OUT/suite_gpu_run_logs.tar.gz" -C /tmp/suite_gpu $(cd /tmp/suite_gpu 2>/dev/null && find . -name "*.log") 2>/dev/null
timeout "${SPEED_S:-150}" python3 benchmarks/speed_gpu.py 2>&1 | tee "$OUT/speed_gpu.log"
cp benchmarks/results/speed_gpu.json "$OUT/" 2>/dev/null
echo "gpu checks done"
