"""Where native CHGNet spends its GPU time (torch.profiler, top kernels): a batch of 32 56-atom cells
and one 5,040-atom cell, E+F+S+M inference.

    python benchmarks/profile_gpu.py  (DEV=cpu, SC=2,3,3 to try it on a CPU)"""

import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile
from torch_geometric.data import Batch

sys.path.insert(0, "benchmarks")
from speed_gpu import lmfp_cells, median_ms

from backbones.chgnet import CHGNet
from mfwrap.data.graph import structures_to_graphs
from mfwrap.physics import energy_and_derivatives

dev = torch.device(os.environ.get("DEV", "cuda"))
model = CHGNet.from_pretrained("0.3.0").to(dev).eval()
for name, (count, sc) in {
    "batch 32 x 56": (32, (1, 1, 2)),
    "1 x 5040": (1, tuple(int(x) for x in os.environ.get("SC", "5,6,6").split(","))),
}.items():
    batch = Batch.from_data_list(structures_to_graphs(lmfp_cells(count, sc, 1), model.graph_spec)).to(dev)

    def infer(batch=batch):
        return energy_and_derivatives(model, batch, forces=True, stress=True)

    def fwd(batch=batch):
        return model(batch)

    index_keys = sorted(k for k in batch.keys() if "index" in k or "angle" in k)
    print(f"== {name}: atoms {batch.num_nodes}, edges {batch.edge_index.shape[1]}, keys {index_keys}", flush=True)
    for k in batch.keys():
        v = batch[k]
        if torch.is_tensor(v) and v.numel() > 100000:
            print("   ", k, tuple(v.shape), v.dtype)
    print(f"   E+F+S+M {median_ms(infer, dev, 5):.1f} ms; energy only forward (no grad) ", end="")
    with torch.no_grad():
        print(f"{median_ms(fwd, dev, 5):.1f} ms", flush=True)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        infer()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=14, max_name_column_width=60), flush=True)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8, max_name_column_width=60), flush=True)
