"""Does the compiled CHGNet path (mfwrap.compile_model) run under the installed torch, on each device,
with and without create_graph? Prints OK and the largest difference from eager, or the failure.
    python benchmarks/compile_probe.py"""

import sys
import time

import torch
from torch_geometric.data import Batch

sys.path.insert(0, "benchmarks")
from speed_gpu import lmfp_cells

from backbones.chgnet import CHGNet
from mfwrap import compile_model
from mfwrap.bench.backbones import TINY_CHGNET
from mfwrap.data.graph import structures_to_graphs
from mfwrap.physics import energy_and_derivatives

print("torch", torch.__version__, flush=True)
devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
for dev in devices:
    torch._dynamo.reset()
    model = CHGNet(**TINY_CHGNET).to(dev)
    batch = Batch.from_data_list(structures_to_graphs(lmfp_cells(2, (1, 1, 1), 0), model.graph_spec)).to(dev)
    ref = energy_and_derivatives(model, batch)
    for create_graph in (False, True):
        t0 = time.perf_counter()
        try:
            out = energy_and_derivatives(compile_model(model), batch, create_graph=create_graph)
            err = max((out[k] - ref[k]).abs().max().item() for k in ("energy", "forces", "stress"))
            print(
                f"{dev} create_graph={create_graph}: OK in {time.perf_counter() - t0:.1f}s, max diff {err:.1e}",
                flush=True,
            )
        except Exception as e:
            print(
                f"{dev} create_graph={create_graph}: FAILED {type(e).__name__}: {str(e).splitlines()[0][:300]}",
                flush=True,
            )
            print("".join(line for line in str(e).splitlines(True) if "INTERNAL ASSERT" in line)[:400], flush=True)
