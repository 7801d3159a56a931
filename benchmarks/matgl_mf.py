"""matgl's own multi-fidelity M3GNet against M3GNet wrapped by mfwrap (ECMR), head to head.

Both start from the same M3GNet architecture and see the same LMFP frames (``load_lmfp("small", 0)``:
``n_low`` low- and ``n_high`` high-fidelity training frames, ``n_val`` high-fidelity validation
frames, the 50 high-fidelity test frames), the same trainer (:class:`mfwrap.train.Trainer`: Huber
loss on energy, forces, stress; Adam, cosine schedule; same epochs, batch size, seed) and the same
graphs. They differ only in how fidelity enters:

* ``matgl_state``: matgl's recipe for several data sets in one model: M3GNet built with
  ``include_state=True, ntypes_state=2`` and the fidelity index as its state (an embedding that
  every graph layer reads and updates), matgl's own ``forward`` called on the batch's graph (its
  bond graph from the batch's angle pairs), and per-fidelity element references (matgl's
  multi-state ``AtomRef``: one row per fidelity), fitted by least squares on each fidelity's data.
* ``mfwrap_ECMR``: ``MultiFidelity(MatglM3GNet(...), ["low", "high"], "ECMR")``.

Printed: high-fidelity test MAE (energy meV/atom, forces meV/Å, stress GPa) and seconds per
optimiser step (training steps only). Written: ``benchmarks/results/matgl_mf.json``. For scale
(``benchmarks/results/fidelity_gap.json``): predicting zero forces gives 800 meV/Å, the
high-fidelity composition model alone 28.5 meV/atom.

Run: ``python benchmarks/matgl_mf.py`` (defaults take a few minutes on one CPU thread);
``--quick`` is a smoke test (seconds). Needs ``matgl`` (``pip install mfwrap[matgl]``).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import torch
from timed_trainer import TimedTrainer
from torch import Tensor, nn

from backbones.matgl import MatglM3GNet
from mfwrap import MultiFidelity
from mfwrap.data import keys as K
from mfwrap.data.graph import edge_vectors, structure_index
from mfwrap.mechanisms.composition_fit import fit_linear_composition
from mfwrap.train import TrainConfig
from mfwrap.train.data import DataConfig, load_data

FIDELITIES = ["low", "high"]


class MatglStateM3GNet(nn.Module):
    """matgl's multi-fidelity M3GNet: E_b = M3GNet(graph_b, state = f_b) + Σ_{i∈b} ref[f_b, Z_i] (eV)."""

    def __init__(self, state_dim: int = 16, **kwargs) -> None:
        super().__init__()
        template = MatglM3GNet(**kwargs)  # same arguments, graph spec and element list as the wrapped model
        self.graph_spec, self.fidelity_names = template.graph_spec, list(FIDELITIES)
        self.register_buffer("type_of_z", template.type_of_z.clone(), persistent=False)
        arguments = {
            **template.config,
            "include_state": True,
            "ntypes_state": len(FIDELITIES),
            "dim_state_embedding": state_dim,
        }
        arguments = {k: v for k, v in arguments.items() if k not in ("data_mean", "data_std")}
        arguments["element_types"] = tuple(arguments["element_types"])
        self.model = type(template.model)(**arguments)
        self.element_refs = nn.Parameter(torch.zeros(len(FIDELITIES), 95), requires_grad=False)  # [f, Z], eV/atom

    def forward(self, batch) -> dict[str, Tensor]:
        neighbour, centre = batch[K.EDGE_INDEX]
        lengths = torch.norm(edge_vectors(batch), dim=1).detach()  # only to mark the three-body bonds
        structure, count = structure_index(batch), batch[K.CELL].shape[0]
        cells = batch[K.CELL][structure[centre]]  # matgl's bond vector: r_j + offshift − r_i, offshift = S · cell
        offshift = torch.bmm(batch[K.EDGE_SHIFT].unsqueeze(1), cells).squeeze(1)
        graph = SimpleNamespace(
            node_type=self.type_of_z[batch[K.ATOMIC_NUMBERS]],
            pos=batch[K.POSITIONS],
            edge_index=torch.stack([centre, neighbour]),
            pbc_offshift=offshift,
            batch=structure,
            num_graphs=count,
        )
        triples = batch[K.ANGLE_EDGES]
        line_graph = {
            "line_edge_index": triples,
            "n_triple_ij": torch.bincount(triples[0], minlength=lengths.shape[0]),
            "kept_edge_ids": torch.nonzero(lengths <= self.model.threebody_cutoff).squeeze(1),
        }
        fidelity = batch[K.FIDELITY].reshape(-1)
        energy = self.model(graph, state_attr=fidelity, l_g=line_graph).reshape(-1)
        self.model.feature_dict = {}  # matgl keeps every layer's output there; drop it
        per_atom = self.element_refs[fidelity[structure], batch[K.ATOMIC_NUMBERS]]
        return {K.ENERGY: energy + torch.zeros_like(energy).index_add(0, structure, per_atom)}

    def fit_composition(self, graphs: Sequence, ridge: float = 1e-6) -> None:
        """One least-squares element-reference row per fidelity (as matgl's AtomRef.fit, per data set)."""
        pooled = fit_linear_composition(graphs, ridge=ridge)
        with torch.no_grad():
            for f in range(len(FIDELITIES)):
                own = [g for g in graphs if int(g[K.FIDELITY]) == f]
                self.element_refs[f] = fit_linear_composition(own, ridge=ridge, prior=pooled) if own else pooled


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    sizes = {
        "dim_node_embedding": args.units,
        "dim_edge_embedding": args.units,
        "units": args.units,
        "nblocks": args.blocks,
        "cutoff": args.cutoff,
        "threebody_cutoff": args.threebody_cutoff,
        "element_types": ["Li", "O", "P", "Mn", "Fe"],
    }
    spec = MatglM3GNet(**sizes).graph_spec
    data = DataConfig.from_dict({"lmfp": {"n_high": args.n_high, "n_low": args.n_low, "n_val": args.n_val}})
    train, val, test = load_data(data, spec)
    test = test[: args.n_test]
    models = {
        "matgl_state": lambda: MatglStateM3GNet(state_dim=args.units, **sizes),
        "mfwrap_ECMR": lambda: MultiFidelity(MatglM3GNet(**sizes), FIDELITIES, "ECMR"),
    }
    results = {}
    for name, build in models.items():
        torch.manual_seed(args.seed)
        model = build()
        with tempfile.TemporaryDirectory() as out:
            config = TrainConfig(
                epochs=args.epochs,
                batch_size=args.batch_size,
                lr=args.lr,
                targets="efs",
                output_dir=out,
                progress=False,
                seed=args.seed,
            )
            trainer = TimedTrainer(model, config, fidelity_names=FIDELITIES)
            start = time.perf_counter()
            summary = trainer.fit(train, val, test)
            total = time.perf_counter() - start
        high = summary["test"]["high"]
        results[name] = {
            "energy_meV_per_atom": high["energy"]["mae"],
            "forces_meV_per_A": high["forces"]["mae"],
            "stress_GPa": high["stress"]["mae"],
            "seconds_per_step": trainer.step_seconds / summary["steps"],
            "steps": summary["steps"],
            "parameters": sum(p.numel() for p in model.parameters()),
            "total_seconds": total,
        }
    return {
        "data": f"LMFP small seed 0: {args.n_low} low + {args.n_high} high training, {args.n_val} high validation, "
        f"{len(test)} high test frames",
        "options": vars(args),
        "results": results,
        "machine": {"cpu": platform.machine(), "threads": args.threads, "torch": torch.__version__},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-high", type=int, default=25)
    parser.add_argument("--n-low", type=int, default=75)
    parser.add_argument("--n-val", type=int, default=5)
    parser.add_argument("--n-test", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--units", type=int, default=32)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--cutoff", type=float, default=4.5)
    parser.add_argument("--threebody-cutoff", type=float, default=3.5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke test: 4 + 4 frames, 1 epoch, 4 test frames")
    parser.add_argument("--out", default="benchmarks/results/matgl_mf.json")
    args = parser.parse_args()
    if args.quick:
        args.n_high, args.n_low, args.n_val, args.n_test, args.epochs, args.units = 4, 4, 1, 4, 1, 16
    result = run(args)
    if not args.quick:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(result["data"])
    print(f"{'model':<14}{'E meV/atom':>12}{'F meV/Å':>10}{'σ GPa':>8}{'s/step':>9}{'params':>9}")
    for name, r in result["results"].items():
        print(
            f"{name:<14}{r['energy_meV_per_atom']:>12.1f}{r['forces_meV_per_A']:>10.1f}{r['stress_GPa']:>8.3f}"
            f"{r['seconds_per_step']:>9.3f}{r['parameters']:>9d}"
        )


if __name__ == "__main__":
    main()
