"""Training-step time: native CHGNet in the mfwrap trainer vs the official chgnet Trainer.

Same data for both: 16 perturbed Li_x Mn_y Fe_(1-y) PO4 1×1×2 cells (≤ 56 atoms) labelled by the
official CHGNet 0.3.0 (energy, forces, stress, magmoms); batch 4; loss on E+F+S+M (Huber,
weights 1 : 1 : 0.1 : 0.1); Adam, lr 0.005; forces and stress by autograd with create_graph, so
every step is a double backward. Both start from the 0.3.0 weights, float32, one thread.

A "step" is what each trainer's inner loop does per batch: forward, derivatives, loss, backward,
optimiser and scheduler step. Graphs are built beforehand for both; the official trainer's
``StructureData`` would rebuild them every epoch, so that cost is reported separately. Blocks of
steps alternate between the implementations (noise on a shared machine hits both alike);
reported: median seconds per step and the ratio.

    python benchmarks/train_step.py [--steps 12] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from backbones.chgnet import CHGNet
from mfwrap.data import keys as K
from mfwrap.data.graph import to_graph
from mfwrap.datasets.structures import lifepo4
from mfwrap.train import TrainConfig, Trainer

RESULTS = Path(__file__).parent / "results"


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


def official_setup(data, batch_size: int):
    from chgnet.data.dataset import StructureData, collate_graphs
    from chgnet.model import CHGNet as OfficialCHGNet
    from chgnet.trainer import Trainer as OfficialTrainer

    with contextlib.redirect_stdout(io.StringIO()):
        model = OfficialCHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)
        labels = [model.predict_structure(s, task="efsm") for s in data]
        dataset = StructureData(structures=data, energies=[l["e"] for l in labels], forces=[l["f"] for l in labels],
                                stresses=[l["s"] for l in labels], magmoms=[l["m"] for l in labels], shuffle=False)
        trainer = OfficialTrainer(model, targets="efsm", criterion="Huber", learning_rate=0.005, epochs=1,
                                  use_device="cpu", print_freq=10**9)
    start = time.perf_counter()
    items = [dataset[i] for i in range(len(data))]
    conversion = (time.perf_counter() - start) / len(data) * batch_size
    batches = [collate_graphs(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]

    def step(batch_list):
        with contextlib.redirect_stdout(io.StringIO()):
            trainer._train(batch_list, 0)

    return labels, batches, step, conversion


def native_setup(data, labels, batch_size: int, out_dir: Path):
    model = CHGNet.from_pretrained("0.3.0")
    start = time.perf_counter()
    graphs = [
        to_graph(s, model.graph_spec, name=str(i), labels={
            K.ENERGY: float(l["e"]) * len(s), K.FORCES: l["f"], K.STRESS: l["s"], K.MAGMOMS: np.ravel(l["m"])})
        for i, (s, l) in enumerate(zip(data, labels))
    ]
    conversion = (time.perf_counter() - start) / len(data) * batch_size
    trainer = Trainer(model, TrainConfig(targets="efsm", batch_size=batch_size, lr=0.005, epochs=1,
                                         output_dir=str(out_dir), progress=False))
    trainer.setup_optimiser(steps_total=1000)
    batches = [torch.arange(i, min(i + batch_size, len(graphs))) for i in range(0, len(graphs), batch_size)]

    def step(batch_list):
        for indices in batch_list:
            trainer.train_step(graphs, indices)

    return batches, step, conversion


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per implementation (after 2 warm-up steps)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    data = structures(16)
    labels, official_batches, official_step, official_conv = official_setup(data, args.batch_size)
    native_batches, native_step, native_conv = native_setup(data, labels, args.batch_size, Path("/tmp/mfwrap-bench-train-step"))

    times = {"official": [], "native": []}
    for i in range(args.steps + 2):
        for name, batches, step in (("official", official_batches, official_step), ("native", native_batches, native_step)):
            batch = [batches[i % len(batches)]]
            start = time.perf_counter()
            step(batch)
            if i >= 2:
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    result = {
        "what": "one training step, batch of 4 LMFP 1x1x2 cells (<=56 atoms), E+F+S+M Huber loss, double backward, Adam",
        "threads": args.threads, "batch_size": args.batch_size, "steps": args.steps,
        "median_s_per_step": median, "speedup_native_vs_official": median["official"] / median["native"],
        "graph_conversion_s_per_batch": {"official": official_conv, "native": native_conv},
        "all_s": times, "torch": torch.__version__,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train_step.json").write_text(json.dumps(result, indent=1))
    print(f"{'':<28}{'official chgnet':>16}{'native mfwrap':>16}")
    print(f"{'median s / training step':<28}{median['official']:>16.3f}{median['native']:>16.3f}")
    print(f"{'graph building s / batch':<28}{official_conv:>16.3f}{native_conv:>16.3f}")
    print(f"speed-up of the native step: {result['speedup_native_vs_official']:.2f}x  ({args.threads} thread(s))")


if __name__ == "__main__":
    main()
