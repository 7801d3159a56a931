"""Training-step throughput: official chgnet Trainer vs mfwrap (bare CHGNet and MultiFidelity(ECMR),
eager and compiled, one-fidelity and mixed-fidelity batches), 1 and 2 threads, batches of 4 and 16,
and 2-process DDP (gloo) against 1 process with 2 threads.

Data: 32 perturbed Li_x Mn_y Fe_(1-y) PO4 1×1×2 cells (≤ 56 atoms) labelled by the official CHGNet
0.3.0 (energy, forces, stress, magmoms). Every model starts from the 0.3.0 weights, float32. A step
is what each trainer's inner loop does per batch: forward, forces and stress by autograd (official,
mfwrap eager: create_graph, double backward; mfwrap compiled: derivatives inside the graph, one
backward), Huber loss on E+F+S+M (1 : 1 : 0.1 : 0.1), backward, Adam step. Graphs are built
beforehand for every implementation. Multi-fidelity batches: "one fidelity" = every structure at
the high fidelity; "mixed" = alternating low / high.

Within one (threads, batch size) block the implementations take turns one step at a time (noise
on a shared machine hits all alike); reported: median seconds per step, structures per second, the
ratio to the official Trainer, peak resident memory of one step per atom (VmHWM reset through
/proc/self/clear_refs after glibc's malloc_trim), and each compiled model's first-step (compile) time.

    python benchmarks/train_step.py [--steps 8] [--threads 1 2] [--batch-sizes 4 16] [--no-ddp]
    python benchmarks/train_step.py --scale 20     # one step on supercells up to 20 GiB
                                                   # (results/train_step_scaling.json)
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import io
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed_chgnet import peak_rss_above_baseline  # noqa: E402

from backbones.chgnet import CHGNet  # noqa: E402
from mfwrap import MultiFidelity  # noqa: E402
from mfwrap.data import keys as K  # noqa: E402
from mfwrap.data.graph import to_graph  # noqa: E402
from mfwrap.datasets.structures import lifepo4  # noqa: E402
from mfwrap.train import TrainConfig, Trainer  # noqa: E402

RESULTS = Path(__file__).parent / "results"
FIDELITIES = ["low", "high"]


def structures(count: int, seed: int = 0):
    """Random Li removal, Mn/Fe mixing, ±3 % axial strains and 0.05 Å displacements of the 56-atom cell."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        s = lifepo4((1, 1, 2))
        fe = [i for i, site in enumerate(s) if site.specie.symbol == "Fe"]
        for i in rng.choice(fe, rng.integers(0, len(fe) + 1), replace=False):
            s.replace(int(i), "Mn")
        li = [i for i, site in enumerate(s) if site.specie.symbol == "Li"]
        s.remove_sites(sorted(rng.choice(li, rng.integers(0, 4), replace=False).tolist()))
        s.apply_strain(rng.uniform(-0.03, 0.03, 3).tolist())
        s.perturb(0.05)
        out.append(s)
    return out


def official_setup(data, labels, batch_size: int) -> Callable[[int], None]:
    from chgnet.data.dataset import StructureData, collate_graphs
    from chgnet.model import CHGNet as OfficialCHGNet
    from chgnet.trainer import Trainer as OfficialTrainer

    with contextlib.redirect_stdout(io.StringIO()):
        model = OfficialCHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)
        dataset = StructureData(
            structures=data,
            energies=[label["e"] for label in labels],
            forces=[label["f"] for label in labels],
            stresses=[label["s"] for label in labels],
            magmoms=[label["m"] for label in labels],
            shuffle=False,
        )
        trainer = OfficialTrainer(
            model, targets="efsm", criterion="Huber", learning_rate=0.005, epochs=1, use_device="cpu", print_freq=10**9
        )
    items = [dataset[i] for i in range(len(data))]
    batches = [collate_graphs(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]

    def step(i: int) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            trainer._train([batches[i % len(batches)]], 0)

    return step


def labelled_graphs(data, labels, spec, fidelities: list[int]):
    return [
        to_graph(
            s,
            spec,
            fidelity=f,
            name=str(i),
            labels={
                K.ENERGY: float(label["e"]) * len(s),
                K.FORCES: label["f"],
                K.STRESS: label["s"],
                K.MAGMOMS: np.ravel(label["m"]),
            },
        )
        for i, (s, label, f) in enumerate(zip(data, labels, fidelities))
    ]


def mfwrap_setup(
    model, graphs, batch_size: int, compile_mode: bool, out: Path
) -> tuple[Callable[[int], None], Trainer]:
    trainer = Trainer(
        model,
        TrainConfig(
            targets="efsm",
            batch_size=batch_size,
            lr=0.005,
            epochs=1,
            output_dir=str(out),
            progress=False,
            compile=compile_mode,
        ),
    )
    trainer.setup_optimiser(steps_total=10**6)
    batches = [torch.arange(i, i + batch_size) for i in range(0, len(graphs) - batch_size + 1, batch_size)]

    def step(i: int) -> None:
        trainer.train_step(graphs, batches[i % len(batches)])

    return step, trainer


def implementations(data, labels, batch_size: int, compile_too: bool, official: bool, tmp: Path) -> dict:
    """name → (step, trainer or None); models are fresh copies of the 0.3.0 weights."""
    native = CHGNet.from_pretrained("0.3.0")
    spec = native.graph_spec
    high = labelled_graphs(data, labels, spec, [1] * len(data))
    mixed = labelled_graphs(data, labels, spec, [i % 2 for i in range(len(data))])
    mf = MultiFidelity(native, FIDELITIES, "ECMR")
    mf_compiled = MultiFidelity(native, FIDELITIES, "ECMR")
    found = {}
    if official:
        found["official chgnet"] = (official_setup(data, labels, batch_size), None)
    found["native eager"] = mfwrap_setup(CHGNet.from_pretrained("0.3.0"), high, batch_size, False, tmp / "n")
    found["MF eager, one fidelity"] = mfwrap_setup(mf, high, batch_size, False, tmp / "m1")
    found["MF eager, mixed"] = (
        mfwrap_setup(mf, mixed, batch_size, False, tmp / "m2")[0],
        found["MF eager, one fidelity"][1],
    )
    if compile_too:
        found["native compiled"] = mfwrap_setup(CHGNet.from_pretrained("0.3.0"), high, batch_size, True, tmp / "nc")
        step, trainer = mfwrap_setup(mf_compiled, high, batch_size, True, tmp / "mc")
        found["MF compiled, one fidelity"] = (step, trainer)
        found["MF compiled, mixed"] = (
            lambda i, t=trainer: t.train_step(mixed, torch.arange(0, batch_size) + batch_size * (i % 2)),
            trainer,
        )
    return found


def release_freed_memory() -> None:
    """Hand memory that earlier steps freed back to the OS (glibc), so that a step's peak above the
    resident memory before it is its own working set, not what the allocator kept."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def measure_block(found: dict, steps: int, atoms_per_batch: int, batch_size: int) -> dict:
    rows = {}
    for name, (step, trainer) in found.items():  # warm-up: compiles, allocator, caches
        start = time.perf_counter()
        step(0)
        first = time.perf_counter() - start
        step(1)
        release_freed_memory()
        memory, _ = peak_rss_above_baseline(lambda: step(2))
        rows[name] = {
            "first_step_s": first,
            "peak_mib_per_atom": memory / atoms_per_batch,
            "compile_s": getattr(trainer, "compile_seconds", None) if "compiled" in name else None,
            "times": [],
        }
    for i in range(steps):
        for name, (step, _) in found.items():
            start = time.perf_counter()
            step(3 + i)
            rows[name]["times"].append(time.perf_counter() - start)
    reference = statistics.median(rows["official chgnet"]["times"]) if "official chgnet" in rows else None
    for row in rows.values():
        row["median_s_per_step"] = statistics.median(row["times"])
        row["structures_per_s"] = batch_size / row["median_s_per_step"]
        row["speedup_vs_official"] = reference / row["median_s_per_step"] if reference else None
    return rows


_DDP_WORKER = """
import os, sys, time, statistics, json, torch
torch.set_num_threads(1)
sys.path.insert(0, {root!r})
from mfwrap import MultiFidelity
from backbones.chgnet import CHGNet
from mfwrap.train import TrainConfig, Trainer
graphs = torch.load({graphs!r}, weights_only=False)  # this benchmark's own temporary file
trainer = Trainer(MultiFidelity(CHGNet.from_pretrained("0.3.0"), ["low", "high"], "ECMR"),
                  TrainConfig(batch_size={batch}, lr=0.005, epochs=1, output_dir={out!r}, progress=False))
trainer.setup_optimiser(10**6)
times = []
for i in range({steps} + 2):
    torch.distributed.barrier()
    start = time.perf_counter()
    trainer.train_step(graphs, torch.arange({batch}) + {batch} * (i % 2))
    torch.distributed.barrier()
    times.append(time.perf_counter() - start)
if trainer.ctx.is_main:
    json.dump(times[2:], open({result!r}, "w"))
"""


def measure_ddp(data, labels, batch_size: int, steps: int, tmp: Path) -> dict:
    """MF eager, global batch ``batch_size``, mixed fidelities: 2 gloo processes × 1 thread (torchrun)."""
    import subprocess

    graphs = labelled_graphs(data, labels, CHGNet().graph_spec, [i % 2 for i in range(len(data))])
    torch.save(graphs, tmp / "graphs.pt")
    script = tmp / "ddp_worker.py"
    result = tmp / "ddp.json"
    script.write_text(
        _DDP_WORKER.format(
            root=str(Path(__file__).resolve().parents[1]),
            graphs=str(tmp / "graphs.pt"),
            batch=batch_size,
            out=str(tmp / "ddp"),
            steps=steps,
            result=str(result),
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    subprocess.run(
        [str(torchrun), "--nproc-per-node=2", "--master-port=29533", str(script)],
        check=True,
        env=env,
        capture_output=True,
    )
    times = json.loads(result.read_text())
    return {
        "median_s_per_step": statistics.median(times),
        "structures_per_s": batch_size / statistics.median(times),
        "times": times,
    }


SCALE_CELLS = [
    (1, 1, 2),
    (2, 1, 2),
    (2, 2, 2),
    (2, 2, 4),
    (3, 3, 3),
    (3, 3, 4),
    (4, 4, 4),
    (4, 4, 5),
]  # 56 … 2,240 atoms


def scale_worker(cell: tuple[int, int, int]) -> dict:
    """One MultiFidelity(ECMR) eager training step (E+F+S+M loss, double backward) on one LMFP
    supercell, 1 thread: seconds and peak resident memory above the pre-step baseline."""
    torch.set_num_threads(1)
    structure = lifepo4(cell)
    structure.perturb(0.05)
    n = len(structure)
    rng = np.random.default_rng(0)
    label = {"e": -6.0, "f": rng.normal(0, 0.1, (n, 3)), "s": np.zeros((3, 3)), "m": rng.uniform(0, 4, n)}
    model = MultiFidelity(CHGNet(), FIDELITIES, "ECMR")
    graphs = labelled_graphs([structure], [label], model.graph_spec, [1])
    with tempfile.TemporaryDirectory() as tmp:
        step, _ = mfwrap_setup(model, graphs, 1, False, Path(tmp))
        step(0)
        release_freed_memory()
        start = time.perf_counter()
        memory, method = peak_rss_above_baseline(lambda: step(1))
        seconds = time.perf_counter() - start
    return {
        "atoms": n,
        "seconds": seconds,
        "peak_mib": memory,
        "ms_per_atom": 1000 * seconds / n,
        "mib_per_atom": memory / n,
        "memory_method": method,
    }


def measure_scale(limit_gib: float) -> list[dict]:
    """:func:`scale_worker` per cell in a fresh process, while the memory predicted linearly from the
    previous cell stays under ``limit_gib``."""
    import subprocess

    rows = []
    for cell in SCALE_CELLS:
        atoms = 28 * int(np.prod(cell))
        if rows and rows[-1]["mib_per_atom"] * atoms / 1024 > limit_gib:
            rows.append(
                {
                    "atoms": atoms,
                    "skipped": f"predicted {rows[-1]['mib_per_atom'] * atoms / 1024:.1f} GiB > {limit_gib}",
                }
            )
            break
        done = subprocess.run(
            [sys.executable, __file__, "--scale-worker", ",".join(map(str, cell))],
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        if done.returncode != 0:
            rows.append({"atoms": atoms, "failed": done.stderr[-500:]})
            break
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"  {atoms:>5} atoms: {rows[-1]['seconds']:.2f} s/step, {rows[-1]['peak_mib']:.0f} MiB", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per implementation and block")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled rows (minutes of compiling)")
    parser.add_argument("--no-official", action="store_true")
    parser.add_argument("--no-ddp", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "train_step.json")
    parser.add_argument(
        "--scale",
        type=float,
        default=None,
        metavar="GIB",
        help="only the scaling of one training step with supercell size, up to this much memory",
    )
    parser.add_argument("--scale-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scale_worker:
        print(json.dumps(scale_worker(tuple(int(c) for c in args.scale_worker.split(",")))))
        return
    if args.scale is not None:
        rows = measure_scale(args.scale)
        save(
            {
                "what": "one MultiFidelity(ECMR) eager training step on one LMFP supercell, 1 thread",
                "rows": rows,
                "torch": torch.__version__,
            },
            args.out.with_name("train_step_scaling.json"),
        )
        return
    warnings.filterwarnings("ignore")
    from chgnet.model import CHGNet as OfficialCHGNet

    data = structures(32)
    with contextlib.redirect_stdout(io.StringIO()):
        teacher = OfficialCHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)
        labels = [teacher.predict_structure(s, task="efsm") for s in data]
    atoms = [len(s) for s in data]
    report = {
        "what": __doc__.split("\n\n")[0],
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "steps": args.steps,
        "blocks": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for batch_size in args.batch_sizes:
            found = implementations(data, labels, batch_size, not args.no_compile, not args.no_official, Path(tmp))
            for threads in args.threads:
                torch.set_num_threads(threads)
                rows = measure_block(found, args.steps, sum(atoms[:batch_size]), batch_size)
                report["blocks"].append({"threads": threads, "batch_size": batch_size, "rows": rows})
                print_block(threads, batch_size, rows)
                save(report, args.out)
            del found  # the block's models and optimisers (GBs at batch 16) before DDP starts two more processes
            gc.collect()
            release_freed_memory()
            if not args.no_ddp and 2 in args.threads:
                ddp = measure_ddp(data, labels, batch_size, args.steps, Path(tmp))
                single = next(b for b in report["blocks"] if b["threads"] == 2 and b["batch_size"] == batch_size)
                ddp["speedup_vs_1_process_2_threads"] = (
                    single["rows"]["MF eager, mixed"]["median_s_per_step"] / ddp["median_s_per_step"]
                )
                report.setdefault("ddp", {})[str(batch_size)] = ddp
                print(
                    f"  DDP 2 processes x 1 thread, MF eager mixed, batch {batch_size}: "
                    f"{ddp['median_s_per_step']:.3f} s/step "
                    f"({ddp['speedup_vs_1_process_2_threads']:.2f}x one process with 2 threads)"
                )
                save(report, args.out)


def save(report: dict, path: Path) -> None:
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(report, indent=1))


def print_block(threads: int, batch_size: int, rows: dict) -> None:
    print(f"\n{threads} thread(s), batch of {batch_size}")
    print(f"{'':<28}{'s/step':>9}{'struct/s':>10}{'vs official':>13}{'MiB/atom':>10}{'compile s':>11}")
    for name, row in rows.items():
        ratio = f"{row['speedup_vs_official']:.2f}x" if row["speedup_vs_official"] else "-"
        compiled = f"{row['compile_s']:.0f}" if row["compile_s"] else "-"
        print(
            f"{name:<28}{row['median_s_per_step']:>9.3f}{row['structures_per_s']:>10.2f}{ratio:>13}"
            f"{row['peak_mib_per_atom']:>10.2f}{compiled:>11}"
        )


if __name__ == "__main__":
    main()
