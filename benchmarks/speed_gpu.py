"""GPU speed: each scatter backend alone, and native CHGNet end to end against official chgnet.

    python benchmarks/speed_gpu.py            # full run (CUDA: scatter + end to end)
    python benchmarks/speed_gpu.py --quick    # smaller sizes, fewer repeats

Part 1, scatter alone (any device): E rows of F = 64 float32 features summed into K segments
(degree 32), for every backend that runs on the device: ``scatter_sum`` on a shuffled index and,
as the baseline, torch's in-place ``index_add_``. Effective bandwidth counts the bytes each op must
move at least (rows read once, indices, output written) and is compared with the device's
measured copy bandwidth (``dst.copy_(src)``, read + write).
On CPU, Triton runs only under ``TRITON_INTERPRET=1``, at a tiny size: correctness, not speed.

Part 2, CUDA only: ``CHGNet.from_pretrained("0.3.0")`` (backbones.chgnet) through
``mfwrap.physics.energy_and_derivatives`` against chgnet 0.4.2 with the same weights, on batches
of 4 and 32 LiMn0.5Fe0.5PO4-like 56-atom cells and one 5,040-atom cell: E+F+S+M inference and a
training step (loss on energy/atom, forces, stress, magmoms; backward through the forces; Adam
step), per scatter backend and for ``mfwrap.compile_model`` (inductor); medians of CUDA-event
timings, peak memory, and the outputs' max abs differences against official. Graph construction
is excluded from both (built beforehand).

Writes benchmarks/results/speed_gpu.json and prints tables. Without CUDA the JSON and the
printout say that the GPU figures were not measured.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from mfwrap import ops
from mfwrap.ops.backend import available_backends, triton_interpreted

RESULTS = Path(__file__).resolve().parent / "results" / "speed_gpu.json"
TARGETS = {
    "scatter_fraction_of_copy_bandwidth": 0.70,
    "scatter_speedup_vs_index_add": 1.5,
    "inference_speedup_vs_official": 5.0,
    "training_speedup_vs_official": 3.0,
}
TOLERANCES = {"energy_per_atom": 1e-5, "forces": 1e-4, "stress": 1e-3, "magmoms": 1e-4}


def median_ms(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` in ms (CUDA events on GPU, perf_counter on CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def copy_bandwidth_gbs(device: torch.device, nbytes: int, repeats: int) -> float:
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), device, repeats)
    return 2 * nbytes / ms / 1e6


def scatter_workload(device: torch.device, num_segments: int, degree: int, features: int, seed: int = 0) -> dict:
    """A message-passing-like problem: E = K·degree rows (F features), destinations shuffled."""
    gen = torch.Generator().manual_seed(seed)
    num_rows = num_segments * degree
    index = torch.arange(num_segments).repeat_interleave(degree)[torch.randperm(num_rows, generator=gen)]
    return {"index": index.to(device), "src": torch.randn(num_rows, features, generator=gen).to(device)}


def bench_scatter(device: torch.device, quick: bool) -> dict:
    if device.type == "cuda":
        num_segments, nbytes, repeats = (20_000 if quick else 100_000), 1 << 30, 20
    else:
        num_segments, nbytes, repeats = (1_000 if quick else 4_000), 64 << 20, 10
    degree, features = 32, 64
    bandwidth = copy_bandwidth_gbs(device, nbytes, repeats)
    w = scatter_workload(device, num_segments, degree, features)
    num_rows, size = num_segments * degree, 4
    rows, out, idx = num_rows * features * size, num_segments * features * size, num_rows * 8
    minimal_bytes = {  # bytes each op must move at least
        "index_add_": rows + idx + 2 * out,  # zero-fill + read-modify-write counted once
        "scatter_sum": rows + idx + out,
    }
    target = torch.zeros(num_segments, features, device=device)
    table: dict[str, dict] = {
        "torch.index_add_": {
            "index_add_": median_ms(lambda: target.zero_().index_add_(0, w["index"], w["src"]), device, repeats)
        },
    }
    for backend in available_backends():
        if backend == "triton" and device.type == "cpu":
            continue  # interpreted: see bench_triton_interpreted
        with ops.use_backend(backend):
            table[backend] = {
                "scatter_sum": median_ms(lambda: ops.scatter_sum(w["src"], w["index"], num_segments), device, repeats)
            }
    baseline = table["torch.index_add_"]["index_add_"]
    for backend, times in table.items():
        table[backend] = {
            name: {
                "ms": ms,
                "GB/s": minimal_bytes[name] / ms / 1e6,
                "fraction_of_copy_bandwidth": minimal_bytes[name] / ms / 1e6 / bandwidth,
                "speedup_vs_index_add_": baseline / ms,
            }
            for name, ms in times.items()
        }
    return {
        "device": device_name(device),
        "copy_bandwidth_GBs": bandwidth,
        "problem": {
            "segments": num_segments,
            "rows": num_rows,
            "features": features,
            "dtype": "float32",
            "index": "shuffled destinations, degree 32",
        },
        "backends": table,
    }


def bench_triton_interpreted() -> dict:
    """Triton kernels on CPU under the interpreter: a tiny problem, to show they run (not speed)."""
    w = scatter_workload(torch.device("cpu"), num_segments=64, degree=8, features=16)
    scatter = lambda: ops.scatter_sum(w["src"], w["index"], 64)  # noqa: E731
    with ops.use_backend("torch"):
        reference = scatter()
    with ops.use_backend("triton"):
        error = (scatter() - reference).abs().max().item()
        times = {"scatter_sum": median_ms(scatter, torch.device("cpu"), 3, 1)}
    return {
        "problem": {"segments": 64, "rows": 512, "features": 16},
        "ms": times,
        "max_abs_error_vs_torch": error,
        "note": "TRITON_INTERPRET=1 on CPU: correctness only",
    }


def lmfp_cells(count: int, supercell: tuple[int, int, int], seed: int) -> list:
    """``count`` LiMn0.5Fe0.5PO4-like cells: olivine × ``supercell``, half the Fe → Mn, ±0.03 Å rattle."""
    import numpy as np  # noqa: PLC0415
    from pymatgen.core import Structure  # noqa: PLC0415

    from mfwrap.datasets.structures import lifepo4  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    base = lifepo4(supercell)
    species = [site.specie.symbol for site in base]
    iron = [i for i, symbol in enumerate(species) if symbol == "Fe"]
    cells = []
    for _ in range(count):
        mixed = list(species)
        for i in rng.choice(iron, len(iron) // 2, replace=False):
            mixed[i] = "Mn"
        coords = base.cart_coords + rng.normal(0.0, 0.03, base.cart_coords.shape)
        cells.append(Structure(base.lattice, mixed, coords, coords_are_cartesian=True))
    return cells


def _loss(energy_per_atom, forces, stress, magmoms):
    """A training loss on all four outputs (zero targets: only its cost matters here)."""
    return (
        energy_per_atom.square().mean()
        + forces.square().mean()
        + 0.1 * stress.square().mean()
        + 0.1 * magmoms.square().mean()
    )


def _max_abs_errors(mine: dict, theirs: dict, atoms: torch.Tensor) -> dict[str, float]:
    """Native outputs (total energy) vs official chgnet's (energy per atom, per-structure lists)."""
    pairs = {
        "energy_per_atom": (mine["energy"] / atoms, theirs["e"]),
        "forces": (mine["forces"], torch.cat(theirs["f"])),
        "stress": (mine["stress"], torch.stack(theirs["s"])),
        "magmoms": (mine["magmoms"], torch.cat(theirs["m"])),
    }
    return {k: (a.detach() - b.detach()).abs().max().item() for k, (a, b) in pairs.items()}


def _peak_mb(fn: Callable[[], object], device: torch.device) -> float:
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def bench_end_to_end(device: torch.device, quick: bool, on_case: Callable[[dict], None] = lambda partial: None) -> dict:
    """Native CHGNet (per scatter backend) vs official chgnet, same 0.3.0 weights, same GPU.
    ``on_case`` gets the result so far after each case (to print and save it: a lease can end)."""
    from chgnet.model import CHGNet as OfficialCHGNet  # noqa: PLC0415
    from torch_geometric.data import Batch  # noqa: PLC0415

    from backbones.chgnet import CHGNet  # noqa: PLC0415
    from mfwrap.data.graph import structures_to_graphs  # noqa: PLC0415
    from mfwrap.physics import energy_and_derivatives  # noqa: PLC0415

    repeats = 5 if quick else 10
    native = CHGNet.from_pretrained("0.3.0").to(device).eval()
    official = OfficialCHGNet.load(model_name="0.3.0", use_device=str(device), verbose=False).eval()
    cases = {
        "batch 4 x 56 atoms": lmfp_cells(4, (1, 1, 2), 0),
        "batch 32 x 56 atoms": lmfp_cells(32, (1, 1, 2), 1),
        "1 x 5040 atoms": lmfp_cells(1, (5, 6, 6), 2),
    }
    results = {}
    report = {
        "measured": True,
        "device": device_name(device),
        "weights": "0.3.0",
        "dtype": "float32",
        "tolerances": TOLERANCES,
        "cases": results,
    }
    for case, structures in cases.items():
        t0 = time.perf_counter()
        batch = Batch.from_data_list(structures_to_graphs(structures, native.graph_spec)).to(device)
        native_graph_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        graphs = [official.graph_converter(s).to(device) for s in structures]
        official_graph_s = time.perf_counter() - t0
        atoms = torch.bincount(batch.batch).to(torch.float32)

        def native_infer(model=native):
            return energy_and_derivatives(model, batch, forces=True, stress=True)

        def official_infer(model=official):
            return model(graphs, task="efsm")

        def native_step(model, optimizer):
            out = energy_and_derivatives(model, batch, forces=True, stress=True, create_graph=True)
            optimizer.zero_grad(set_to_none=True)
            _loss(out["energy"] / atoms, out["forces"], out["stress"], out["magmoms"]).backward()
            optimizer.step()

        def official_step(model, optimizer):
            out = model(graphs, task="efsm")
            optimizer.zero_grad(set_to_none=True)
            _loss(out["e"], torch.cat(out["f"]), torch.stack(out["s"]), torch.cat(out["m"])).backward()
            optimizer.step()

        theirs = official_infer()
        trainable = copy.deepcopy(official).train()
        adam = torch.optim.Adam(trainable.parameters(), lr=1e-7)
        entry = {
            "structures": len(structures),
            "atoms": int(atoms.sum()),
            "edges": int(batch.edge_index.shape[1]),
            "graph_construction_s": {"native": native_graph_s, "official": official_graph_s},
            "official": {
                "inference_ms": median_ms(official_infer, device, repeats),
                "inference_peak_MB": _peak_mb(official_infer, device),
                "train_step_ms": median_ms(lambda: official_step(trainable, adam), device, repeats),
                "train_peak_MB": _peak_mb(lambda: official_step(trainable, adam), device),
            },
            "native": {},
        }
        for backend in available_backends():
            try:
                with ops.use_backend(backend):
                    errors = _max_abs_errors(native_infer(), theirs, atoms)
                    model = copy.deepcopy(native).train()
                    adam = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-7)
                    timing = {
                        "inference_ms": median_ms(native_infer, device, repeats),
                        "inference_peak_MB": _peak_mb(native_infer, device),
                        "train_step_ms": median_ms(lambda: native_step(model, adam), device, repeats),
                        "train_peak_MB": _peak_mb(lambda: native_step(model, adam), device),
                    }
            except Exception as error:  # noqa: BLE001 - e.g. a CPU-only torch_scatter build
                entry["native"][backend] = {"error": repr(error)}
                continue
            timing["max_abs_error"] = errors
            timing["within_tolerance"] = all(errors[k] <= TOLERANCES[k] for k in TOLERANCES)
            timing["inference_speedup_vs_official"] = entry["official"]["inference_ms"] / timing["inference_ms"]
            timing["train_speedup_vs_official"] = entry["official"]["train_step_ms"] / timing["train_step_ms"]
            entry["native"][backend] = timing
        try:  # torch.compile (inductor) of the native model, automatic scatter backend; first calls compile
            import mfwrap  # noqa: PLC0415

            compiled = mfwrap.compile_model(native)
            errors = _max_abs_errors(native_infer(compiled), theirs, atoms)
            model = copy.deepcopy(native).train()
            compiled_train = mfwrap.compile_model(model)
            adam = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-7)
            native_step(compiled_train, adam)
            timing = {
                "inference_ms": median_ms(lambda: native_infer(compiled), device, repeats),
                "train_step_ms": median_ms(lambda: native_step(compiled_train, adam), device, repeats),
                "max_abs_error": errors,
                "within_tolerance": all(errors[k] <= TOLERANCES[k] for k in TOLERANCES),
            }
            timing["inference_speedup_vs_official"] = entry["official"]["inference_ms"] / timing["inference_ms"]
            timing["train_speedup_vs_official"] = entry["official"]["train_step_ms"] / timing["train_step_ms"]
            entry["native"]["compiled"] = timing
        except Exception as error:  # noqa: BLE001 - record and go on: the eager rows stand on their own
            entry["native"]["compiled"] = {"error": repr(error)}
        results[case] = entry
        on_case(report)
    return report


def print_end_to_end(result: dict) -> None:
    print(f"\nnative CHGNet vs official chgnet on {result['device']} (E+F+S+M; train step incl. double backward)")
    print(f"{'case':22s} {'backend':14s} {'infer ms':>9s} {'x off':>6s} {'train ms':>9s} {'x off':>6s}  max errors")
    for case, entry in result["cases"].items():
        off = entry["official"]
        print(f"{case:22s} {'official':14s} {off['inference_ms']:9.2f} {'':6s} {off['train_step_ms']:9.2f}")
        for backend, r in entry["native"].items():
            if "error" in r:
                print(f"{case:22s} {backend:14s} failed: {r['error'][:60]}")
                continue
            print(
                f"{case:22s} {backend:14s} {r['inference_ms']:9.2f} {r['inference_speedup_vs_official']:5.1f}x "
                f"{r['train_step_ms']:9.2f} {r['train_speedup_vs_official']:5.1f}x  "
                + ", ".join(f"{k} {v:.1e}" for k, v in r["max_abs_error"].items())
            )


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s)"


def print_scatter(result: dict) -> None:
    print(
        f"\nscatter alone on {result['device']}: copy bandwidth {result['copy_bandwidth_GBs']:.1f} GB/s, "
        f"{result['problem']}"
    )
    print(f"{'backend':18s} {'op':24s} {'ms':>9s} {'GB/s':>8s} {'of copy':>8s} {'vs index_add_':>13s}")
    for backend, ops_ in result["backends"].items():
        for name, r in ops_.items():
            print(
                f"{backend:18s} {name:24s} {r['ms']:9.3f} {r['GB/s']:8.1f} "
                f"{r['fraction_of_copy_bandwidth']:8.0%} {r['speedup_vs_index_add_']:12.2f}x"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller problems, fewer repeats")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:
        torch.set_num_threads(1)
    result: dict = {
        "torch": torch.__version__,
        "backends_available": available_backends(),
        "targets": TARGETS,
        "scatter": bench_scatter(device, args.quick),
    }
    print_scatter(result["scatter"])
    write(result)
    if not cuda and triton_interpreted():
        result["triton_interpreted_cpu"] = bench_triton_interpreted()
        print("\ntriton (interpreted, CPU):", result["triton_interpreted_cpu"])
    if cuda:

        def on_case(partial: dict) -> None:
            result["end_to_end"] = partial
            print_end_to_end({**partial, "cases": dict(list(partial["cases"].items())[-1:])})
            write(result)

        bench_end_to_end(device, args.quick, on_case)
    else:
        result["end_to_end"] = {"measured": False, "reason": "no CUDA device here: GPU figures need a GPU"}
        print("\nNo CUDA device: GPU figures (Triton on GPU, end-to-end CHGNet vs official) were NOT measured.")
    write(result)
    print(f"\nwrote {RESULTS}")


def write(result: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
