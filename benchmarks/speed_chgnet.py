"""CPU speed of the native CHGNet (backbones.chgnet) against official chgnet, same 0.3.0 weights.

    python benchmarks/speed_chgnet.py            # full run (~15 min on 2 cores)
    python benchmarks/speed_chgnet.py --quick    # 1 thread, sizes up to 1,008 atoms (~5 min)

What is timed (wall clock, ``time.perf_counter``; each cell interleaves the two implementations,
alternating which goes first, and reports medians of ``--repeats`` ≥ 10 runs after warm-up):

* model: prebuilt graphs → outputs as numpy. Native: ``mfwrap.physics.energy_and_derivatives`` on
  a ``Batch`` under ``torch.no_grad`` (as ``mfwrap.predict``); official: ``CHGNet.predict_graph``
  on its ``CrystalGraph``s. Tasks: energy ("e"), E+F ("ef"), E+F+S+M ("efsm"); on LiFePO4 1×1×2
  (56 atoms) alone and as a batch of 16 rattled copies (official: ``batch_size=4``, see
  OFFICIAL_BATCH); with 1 and 2 threads.
* end to end: structures → outputs (``mfwrap.predict`` vs ``predict_structure``), E+F+S+M.
* graph: structure → graph (``mfwrap.data.to_graph`` vs chgnet's ``CrystalGraphConverter``).
* scaling: E+F+S+M on LiFePO4 supercells up to 5,040 atoms, each size and implementation in a
  fresh process, 1 thread: median time and peak resident memory above the pre-call baseline.
* compiled: E+F+S+M of ``mfwrap.compile_model(model)`` (inductor, 1 thread) against official, with
  the first (compiling) call's time and the largest differences of both native paths from official.
* where the time goes: self CPU time of the native model by operator kind (matmul, gather,
  scatter, LayerNorm, activations, other elementwise), per task, 1 thread (``torch.profiler``).
* FLOPs: matrix-multiply FLOPs of one E+F+S+M evaluation (``torch.utils.flop_counter``, forward
  and backward), per implementation, and the rate reached against the machine's measured sgemm
  rate (``torch.mm`` of 2048² float32, same thread count).

Allocator: by default the script re-executes itself with glibc told to keep freed memory
(``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2^40``), for both implementations alike. With glibc's
defaults, blocks above 32 MB (a batch of 16 cells: 40 MB activations) are mapped and unmapped on
every call, and the resulting page faults take 35-50 % of the native model's time at batch 16
(0.2-0.8 million minor faults per call). ``--malloc default`` measures the defaults.

Writes benchmarks/results/speed_chgnet.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from torch_geometric.data import Batch  # noqa: E402

import mfwrap  # noqa: E402
from backbones.chgnet import CHGNet  # noqa: E402
from mfwrap.data import keys as K  # noqa: E402
from mfwrap.data.graph import to_graph  # noqa: E402
from mfwrap.datasets.structures import lifepo4  # noqa: E402
from mfwrap.physics import energy_and_derivatives  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "speed_chgnet.json"
TASKS = {"e": {"forces": False, "stress": False}, "ef": {"stress": False}, "efsm": {}}
TARGETS = {"efsm_speedup": 4.0, "graph_speedup": 10.0}
TUNED_MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**40)}
# Official E+F+S+M keeps a double-backward graph (create_graph=True), ~0.8 GB per 56-atom cell:
# it runs the batch of 16 as 4 forward passes of 4 to fit in memory (its cost is linear in atoms).
OFFICIAL_BATCH = 4
SCALING_CELLS = [(1, 1, 2), (2, 2, 4), (3, 3, 4), (4, 4, 5), (4, 5, 9)]  # 56 … 5,040 atoms


def quiet_official():
    """Official CHGNet 0.3.0 on CPU (its load prints; silenced)."""
    from chgnet.model import CHGNet as OfficialCHGNet

    with contextlib.redirect_stdout(io.StringIO()):
        return OfficialCHGNet.load(model_name="0.3.0", verbose=False, use_device="cpu")


def rattled_copies(structure, count: int, sigma: float = 0.02) -> list:
    from pymatgen.core import Structure

    rng = np.random.default_rng(0)
    return [
        Structure(
            structure.lattice,
            structure.species,
            structure.cart_coords + rng.normal(0.0, sigma, (len(structure), 3)),
            coords_are_cartesian=True,
        )
        for _ in range(count)
    ]


def interleaved(native: Callable[[], object], official: Callable[[], object], repeats: int, warmup: int = 2) -> dict:
    """Medians (ms) of wall and process CPU time of two callables measured alternately, and the
    official/native ratios. CPU time is the steadier figure on a shared machine (it does not count
    time the process waits for a core); with 2 threads it sums both threads."""
    for _ in range(warmup):
        native(), official()
    wall: dict[str, list[float]] = {"native": [], "official": []}
    cpu: dict[str, list[float]] = {"native": [], "official": []}
    for rep in range(repeats):
        order = [("native", native), ("official", official)]
        for name, fn in order if rep % 2 == 0 else order[::-1]:
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name].append((time.perf_counter() - start) * 1e3)
            cpu[name].append((time.process_time() - start_cpu) * 1e3)
    result = {"repeats": repeats}
    for label, times in (("", wall), ("cpu_", cpu)):
        native_ms, official_ms = statistics.median(times["native"]), statistics.median(times["official"])
        result.update(
            {
                f"native_{label}ms": native_ms,
                f"official_{label}ms": official_ms,
                f"{label}speedup": official_ms / native_ms,
            }
        )
    return result


def native_model_call(model, batch, task: str) -> Callable[[], object]:
    def run():
        with torch.no_grad():  # as mfwrap.predict: no parameter gradients (energy alone: no graph at all)
            out = energy_and_derivatives(model, batch, **TASKS[task])
        return {k: v.detach().numpy() for k, v in out.items()}

    return run


def measure_speed(model, official, repeats: int, threads: list[int], results: dict) -> None:
    single = lifepo4((1, 1, 2))
    groups = {"single": [single], "batch16": rattled_copies(single, 16)}
    results.update({"model": {}, "end_to_end": {}, "graph": {}})
    for count in threads:
        torch.set_num_threads(count)
        for group, structures in groups.items():
            batch = Batch.from_data_list([to_graph(s, model.graph_spec) for s in structures])
            crystal_graphs = [official.graph_converter(s) for s in structures]
            for task in TASKS:
                key = f"{group}/{task}/{count}t"
                results["model"][key] = interleaved(
                    native_model_call(model, batch, task),
                    lambda: official.predict_graph(crystal_graphs, task=task, batch_size=OFFICIAL_BATCH),
                    repeats,
                )
                print(f"model {key}: {results['model'][key]['speedup']:.2f}x", flush=True)
            key = f"{group}/efsm/{count}t"
            results["end_to_end"][key] = interleaved(
                lambda: mfwrap.predict(model, structures, batch_size=16),
                lambda: official.predict_structure(structures, task="efsm", batch_size=OFFICIAL_BATCH),
                repeats,
            )
            results["graph"][f"{group}/{count}t"] = interleaved(
                lambda: [to_graph(s, model.graph_spec) for s in structures],
                lambda: [official.graph_converter(s) for s in structures],
                repeats,
            )
            save(results)
            print(f"end-to-end/graph {group} {count}t done", flush=True)


def max_differences(native_out: dict, official_out: list[dict], atoms_per_structure: int) -> dict:
    """Largest |native − official| per output over a batch of equal-sized structures (eV/atom, eV/Å, GPa, μB)."""
    official_cat = {key: np.concatenate([np.ravel(o[key]) for o in official_out]) for key in ("e", "f", "s", "m")}
    native_cat = {
        "e": native_out[K.ENERGY].ravel() / atoms_per_structure,
        "f": native_out[K.FORCES].ravel(),
        "s": native_out[K.STRESS].ravel(),
        "m": native_out[K.MAGMOMS].ravel(),
    }
    names = {"e": "energy_eV_per_atom", "f": "forces_eV_per_A", "s": "stress_GPa", "m": "magmoms_muB"}
    return {names[k]: float(np.abs(native_cat[k] - official_cat[k]).max()) for k in names}


def measure_compiled(model, official, repeats: int, results: dict) -> None:
    """E+F+S+M of ``mfwrap.compile_model(model)`` (inductor) against official, 1 thread, with the
    compile time and the largest output differences from official (the foundation tolerances)."""
    torch.set_num_threads(1)
    compiled = mfwrap.compile_model(model)
    single = lifepo4((1, 1, 2))
    results["compiled"] = {}
    for group, structures in {"single": [single], "batch16": rattled_copies(single, 16)}.items():
        batch = Batch.from_data_list([to_graph(s, model.graph_spec) for s in structures])
        crystal_graphs = [official.graph_converter(s) for s in structures]
        start = time.perf_counter()
        native_out = native_model_call(compiled, batch, "efsm")()
        first_call_s = time.perf_counter() - start
        official_out = official.predict_graph(crystal_graphs, task="efsm", batch_size=OFFICIAL_BATCH)
        official_out = official_out if isinstance(official_out, list) else [official_out]
        cell = interleaved(
            native_model_call(compiled, batch, "efsm"),
            lambda: official.predict_graph(crystal_graphs, task="efsm", batch_size=OFFICIAL_BATCH),
            repeats,
        )
        cell.update(
            first_call_s=first_call_s,
            max_difference_from_official=max_differences(native_out, official_out, len(single)),
            eager_max_difference_from_official=max_differences(
                native_model_call(model, batch, "efsm")(), official_out, len(single)
            ),
        )
        results["compiled"][f"{group}/efsm/1t"] = cell
        save(results)
        print(f"compiled {group}/efsm/1t: {cell['speedup']:.2f}x (first call {first_call_s:.0f} s)", flush=True)


def sgemm_gflops(repeats: int = 5) -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * 2048**3 * repeats / (time.perf_counter() - start) / 1e9


def flop_counts(model, official) -> dict:
    """Matmul FLOPs of one E+F+S+M call on LiFePO4 1×1×2 (forward + backward), per implementation."""
    from torch.utils.flop_counter import FlopCounterMode

    structure = lifepo4((1, 1, 2))
    batch = Batch.from_data_list([to_graph(structure, model.graph_spec)])
    graph = official.graph_converter(structure)
    counts = {}
    for name, fn in (
        ("native", native_model_call(model, batch, "efsm")),
        ("official", lambda: official.predict_graph(graph, task="efsm")),
    ):
        with FlopCounterMode(display=False) as counter:
            fn()
        counts[name] = counter.get_total_flops()
    sizes = {
        "atoms": batch.num_nodes,
        "directed_edges": batch.edge_index.shape[1],
        "undirected_bonds": int(batch.num_undirected.sum()),
        "angles": batch.angle_edges.shape[1],
    }
    return {"efsm_matmul_flops": counts, "graph_sizes": sizes}


# aten operators by kind, for the time breakdown (anything else is "other")
OP_KINDS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul"),
    "gather": ("aten::index_select", "aten::index", "aten::gather", "aten::embedding"),
    "scatter": (
        "aten::index_add",
        "aten::index_add_",
        "aten::scatter_add_",
        "aten::scatter_add",
        "aten::index_put_",
        "aten::_index_put_impl_",
        "aten::embedding_dense_backward",
    ),
    "layernorm": ("aten::native_layer_norm", "aten::native_layer_norm_backward"),
    "activations": (
        "aten::silu",
        "aten::silu_backward",
        "aten::sigmoid",
        "aten::sigmoid_backward",
        "aten::abs",
        "aten::sgn",
        "aten::sin",
        "aten::cos",
    ),
    "elementwise": (
        "aten::add",
        "aten::add_",
        "aten::mul",
        "aten::mul_",
        "aten::div",
        "aten::sub",
        "aten::neg",
        "aten::pow",
        "aten::sum",
        "aten::where",
        "aten::copy_",
        "aten::fill_",
        "aten::zero_",
    ),
}


def time_breakdown(model, task: str, repeats: int = 5) -> dict:
    """Share of the native model's self CPU time by operator kind (:data:`OP_KINDS`), one thread,
    LiFePO4 1×1×2, from ``torch.profiler``; the largest shares are where speed-ups must come from."""
    from torch.profiler import ProfilerActivity, profile

    batch = Batch.from_data_list([to_graph(lifepo4((1, 1, 2)), model.graph_spec)])
    run = native_model_call(model, batch, task)
    for _ in range(2):
        run()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            run()
    kind_of = {op: kind for kind, ops in OP_KINDS.items() for op in ops}
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        kind = kind_of.get(event.key, "other")
        totals[kind] = totals.get(kind, 0.0) + event.self_cpu_time_total
    whole = sum(totals.values())
    return {kind: totals[kind] / whole for kind in sorted(totals, key=totals.get, reverse=True)}


def scaling_worker(implementation: str, cell: tuple[int, int, int], repeats: int) -> dict:
    """One size, one implementation, in this (fresh) process: E+F+S+M time and peak memory."""
    torch.set_num_threads(1)
    structure = lifepo4(cell)
    if implementation == "native":
        model = CHGNet.from_pretrained("0.3.0")
        batch = Batch.from_data_list([to_graph(structure, model.graph_spec)])
        run = native_model_call(model, batch, "efsm")
    else:
        official = quiet_official()
        graph = official.graph_converter(structure)
        run = lambda: official.predict_graph(graph, task="efsm")  # noqa: E731
    # Peak of the first call: with the tuned allocator later calls reuse memory that stays resident.
    peak_mib, method = peak_rss_above_baseline(run)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return {
        "atoms": len(structure),
        "ms": statistics.median(times),
        "repeats": repeats,
        "peak_MiB_above_baseline": peak_mib,
        "peak_memory_method": method,
    }


def peak_rss_above_baseline(fn: Callable[[], object]) -> tuple[float, str]:
    """Peak resident memory of one call of ``fn`` above the resident memory just before it, MiB.

    Linux: writing "5" to /proc/self/clear_refs resets the high-water mark VmHWM to the current
    VmRSS, so VmHWM after the call is this call's own peak. Elsewhere only the lifetime peak
    ``ru_maxrss`` exists, which stays at 0 above baseline when an earlier phase (model loading)
    peaked higher; the method used is returned with the figure.
    """

    def status_kib(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)

    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = status_kib("VmRSS")
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        fn()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        scale = 2**20 if sys.platform == "darwin" else 2**10
        return (peak - before) / scale, "ru_maxrss (lifetime peak; 0 when an earlier phase peaked higher)"
    fn()
    return (
        status_kib("VmHWM") - before
    ) / 1024, "VmHWM after resetting it via /proc/self/clear_refs, minus VmRSS before"


def measure_scaling(cells: list, repeats: int, report: dict) -> None:
    """Each (size, implementation) in a fresh process, smallest first, while it fits in memory.

    A size is skipped (recorded with the reason) when the memory predicted from the previous
    size, linearly in atoms, exceeds 80 % of the memory available now (the machine is shared)."""
    import psutil

    report["scaling"] = rows = []
    per_atom_mib: dict[str, float] = {}
    for cell in cells:
        atoms = 28 * int(np.prod(cell))
        row = {"cell": "x".join(map(str, cell)), "atoms": atoms}
        for implementation in ("native", "official"):
            available = psutil.virtual_memory().available / 2**20
            predicted = per_atom_mib.get(implementation, 0.0) * atoms
            if predicted > 0.8 * available:
                row[implementation] = {"skipped": f"needs ~{predicted:.0f} MiB, {available:.0f} MiB available"}
                continue
            reps = repeats if atoms <= 500 else max(2, repeats // 4)
            command = [
                sys.executable,
                __file__,
                "--scaling-worker",
                implementation,
                ",".join(map(str, cell)),
                str(reps),
            ]
            env = dict(os.environ, PYTHONWARNINGS="ignore")
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                row[implementation] = {"skipped": f"worker failed (exit {done.returncode}, e.g. out of memory)"}
                continue
            row[implementation] = json.loads(done.stdout.strip().splitlines()[-1])
            per_atom_mib[implementation] = row[implementation]["peak_MiB_above_baseline"] / atoms
        rows.append(row)
        save(report)
        print(f"scaling {row['cell']} ({atoms} atoms) done", flush=True)


def save(report: dict) -> None:
    """Write the report so far (a long run that is interrupted keeps what it measured)."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))


def print_tables(report: dict) -> None:
    print(
        "\n| workload | threads | native ms | official ms | speedup (wall) | speedup (CPU time) |"
        "\n|---|---|---|---|---|---|"
    )
    rows = [(f"{k.split('/')[0]} {k.split('/')[1].upper()}", k.split("/")[2], c) for k, c in report["model"].items()]
    rows += [(f"{k.split('/')[0]} EFSM end to end", k.split("/")[2], c) for k, c in report["end_to_end"].items()]
    rows += [(f"{k.split('/')[0]} EFSM compiled", k.split("/")[2], c) for k, c in report.get("compiled", {}).items()]
    rows += [(f"{k.split('/')[0]} graph construction", k.split("/")[1], c) for k, c in report["graph"].items()]
    for label, threads, cell in rows:
        print(
            f"| {label} | {threads[:-1]} | {cell['native_ms']:.1f} | {cell['official_ms']:.1f} | "
            f"{cell['speedup']:.2f}x | {cell['cpu_speedup']:.2f}x |"
        )
    print("\n| atoms | native ms | native MiB | official ms | official MiB |\n|---|---|---|---|---|")
    for row in report["scaling"]:
        cells = [
            f"{row[i]['ms']:.0f} | {row[i]['peak_MiB_above_baseline']:.0f}" if "ms" in row[i] else "– | –"
            for i in ("native", "official")
        ]
        print(f"| {row['atoms']} | {cells[0]} | {cells[1]} |")
    flops = report["flops"]
    print(
        f"\nE+F+S+M matmul FLOPs (56 atoms): native {flops['efsm_matmul_flops']['native'] / 1e9:.2f} G, "
        f"official {flops['efsm_matmul_flops']['official'] / 1e9:.2f} G; "
        f"sgemm peak {flops['sgemm_gflops_1t']:.0f} GFLOP/s (1 thread); "
        f"native reaches {flops['native_gflops_1t']:.1f} GFLOP/s on single E+F+S+M"
    )
    print("\nwhere the native model's time goes (self CPU time, 1 thread, 56 atoms):")
    for task, shares in report.get("time_breakdown_1t", {}).items():
        print(f"  {task.upper():<5}" + ", ".join(f"{kind} {share:.0%}" for kind, share in shares.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 thread only and cells up to 1,008 atoms")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--no-compiled", action="store_true", help="skip the torch.compile rows (compiling takes minutes)"
    )
    parser.add_argument("--breakdown", action="store_true", help="only print where the native model's time goes")
    parser.add_argument(
        "--only-model",
        action="store_true",
        help="re-measure only the model/end-to-end/graph rows (1 and 2 threads) and update them in the results",
    )
    parser.add_argument("--malloc", choices=("tuned", "default"), default="tuned", help="glibc allocator settings")
    parser.add_argument("--scaling-worker", nargs=3, metavar=("IMPL", "CELL", "REPEATS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scaling_worker:
        implementation, cell, reps = args.scaling_worker
        print(json.dumps(scaling_worker(implementation, tuple(int(c) for c in cell.split(",")), int(reps))))
        return

    if args.malloc == "tuned" and any(os.environ.get(k) != v for k, v in TUNED_MALLOC.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **TUNED_MALLOC})

    model = CHGNet.from_pretrained("0.3.0")
    if args.breakdown:
        torch.set_num_threads(1)
        for task in ("e", "ef", "efsm"):
            print(task.upper(), ", ".join(f"{kind} {share:.0%}" for kind, share in time_breakdown(model, task).items()))
        return
    official = quiet_official()
    report = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "allocator": {k: os.environ[k] for k in TUNED_MALLOC} if args.malloc == "tuned" else "glibc defaults",
        "structure": "LiFePO4 1x1x2 (56 atoms); batch16 = 16 copies rattled by 0.02 Å",
        "targets": TARGETS,
    }
    if args.only_model:
        previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        measure_speed(model, official, args.repeats, [1, 2], report)
        save({**previous, **report, "model_measured": time.strftime("%Y-%m-%d")})
        print_tables({**previous, **report})
        return
    measure_speed(model, official, args.repeats, [1] if args.quick else [1, 2], report)
    torch.set_num_threads(1)
    report["flops"] = flop_counts(model, official)
    report["flops"]["sgemm_gflops_1t"] = sgemm_gflops()
    single_ms = report["model"]["single/efsm/1t"]["native_ms"]
    report["flops"]["native_gflops_1t"] = report["flops"]["efsm_matmul_flops"]["native"] / single_ms / 1e6
    report["time_breakdown_1t"] = {task: time_breakdown(model, task) for task in ("e", "ef", "efsm")}
    save(report)
    if not args.no_compiled:
        measure_compiled(model, official, args.repeats, report)
    measure_scaling(SCALING_CELLS[:3] if args.quick else SCALING_CELLS, args.repeats, report)
    print_tables(report)
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
