"""The backbone contract: what a network needs so that mfwrap can wrap, train, save and run it.

A backbone is an ``nn.Module`` with

* ``graph_spec`` — a :class:`~mfwrap.data.graph.GraphSpec`: the cutoff of its atom graph and, if
  it reads one, of its bond (line) graph; mfwrap builds the batch's graphs with it;
* ``forward(batch) -> dict`` — a PyG ``Batch`` with the keys of :mod:`mfwrap.data.keys` in,
  ``{"energy": (B,) total energy per structure in eV, "magmoms": (n,) μB (optional)}`` out,
  computed from ``batch.pos`` and ``batch.cell`` (through
  :func:`~mfwrap.data.graph.edge_vectors`) so that :mod:`mfwrap.physics` gets forces and
  stress by autograd;
* ``config`` — its constructor's keyword arguments (JSON-like): ``type(model)(**model.config)``
  rebuilds the architecture, which :mod:`mfwrap.model_file` needs to save and load it.

and optionally

* ``fidelity_spec`` — a dict of :class:`~mfwrap.surgery.FidelitySpec` fields: where mechanisms
  E, M, R and C go (module paths / patterns), and its other ``heads``; without it
  :class:`~mfwrap.MultiFidelity` uses heuristics and warns what they chose. A ``composition``
  module (per-element energies, e.g. an ``nn.Embedding(100, 1)``) is what every training
  method fits by least squares before training (:func:`mfwrap.mechanisms.composition_fit.fit_composition`).
* ``add_element_energies(energies)`` — for a backbone without a composition module but with
  per-element energies of its own (e.g. SevenNet's per-species shift): add ``energies`` (index Z,
  eV/atom) to them, which is where :func:`mfwrap.export.export_fidelity` puts mechanism C's;
* ``export_formats`` — {format name: name of a method(path)} writing the model in a format of its
  own package (``mfwrap export --format``, e.g. CHGNet's ``chgnet``);
* ``compiled(**options) -> nn.Module`` — the same model under ``torch.compile``
  (:func:`mfwrap.compile_model`), optionally with ``energy_and_gradients(batch)`` so that force
  training compiles too.

The backbone knows nothing about fidelities: mfwrap inserts them by module surgery. Fidelity
terms go on invariant (scalar) features only, so name only layers whose outputs are scalars per
row (atoms, edges, angles) in ``message`` and ``embedding``.

Worked example (a small message-passing potential; ``tests/test_backbone.py`` runs it)::

    import torch
    from torch import nn

    from mfwrap.data import keys as K
    from mfwrap.data.graph import GraphSpec, edge_vectors, structure_index
    from mfwrap.ops import scatter_sum, scatter_sum_float64


    class PairNet(nn.Module):
        '''h_i = x_Zi + Σ_j f_c(r_ij) W φ(r_ij) ⊙ x_Zj;  E_b = Σ_{i ∈ b} [MLP(h_i) + μ_Zi]  (eV).'''

        fidelity_spec = {"embedding": "embedding", "message": ["filter"], "readout": ["readout"],
                         "composition": "reference"}

        def __init__(self, features: int = 16, cutoff: float = 4.0) -> None:
            super().__init__()
            self.config = {"features": features, "cutoff": cutoff}
            self.graph_spec = GraphSpec(cutoff=cutoff)
            self.embedding = nn.Embedding(95, features)
            self.filter = nn.Linear(8, features)
            self.readout = nn.Sequential(nn.Linear(features, features), nn.SiLU(), nn.Linear(features, 1))
            self.reference = nn.Embedding(95, 1)
            nn.init.zeros_(self.reference.weight)
            self.register_buffer("centres", torch.linspace(0.5, cutoff, 8))

        def forward(self, batch) -> dict[str, torch.Tensor]:
            neighbour, centre = batch[K.EDGE_INDEX]
            r = edge_vectors(batch).norm(dim=-1, keepdim=True)
            smooth = 0.5 * (torch.cos(torch.pi * r / self.graph_spec.cutoff) + 1.0)
            basis = torch.exp(-((r - self.centres) ** 2)) * smooth
            x = self.embedding(batch[K.ATOMIC_NUMBERS])
            h = x + scatter_sum(self.filter(basis) * smooth * x[neighbour], centre, x.shape[0])  # 0 at the cutoff
            per_atom = self.readout(h).squeeze(-1) + self.reference(batch[K.ATOMIC_NUMBERS]).squeeze(-1)
            return {K.ENERGY: scatter_sum_float64(per_atom, structure_index(batch), batch[K.CELL].shape[0])}

Then ``mfwrap.MultiFidelity(PairNet(), ["pbe", "r2scan"], "ECMR")`` wraps it, the trainer
trains it, and ``save`` / ``mfwrap.load`` round-trip it. Its class must be importable, and
loading a file imports only modules on an allow-list (mfwrap, ``backbones``, modules a config
names in this process): a backbone of your own package loads once its module is registered,
``mfwrap.register_architecture_module("mypkg.models")`` (or ``MFWRAP_ARCHITECTURE_MODULES=mypkg.models``
for the command line); see :mod:`mfwrap.model_file`.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, runtime_checkable

from torch import Tensor, nn

from mfwrap.data.graph import GraphSpec


@runtime_checkable
class Backbone(Protocol):
    """Structural type of a backbone (see the module docstring for the optional members)."""

    graph_spec: GraphSpec
    config: Mapping[str, Any]

    def forward(self, batch: Any) -> dict[str, Tensor]: ...


def check_backbone(model: Any) -> None:
    """TypeError naming what ``model`` lacks of the backbone contract (``config`` is checked when saving)."""
    name = type(model).__name__
    if not isinstance(model, nn.Module):
        raise TypeError(f"a backbone must be a torch.nn.Module, got {name}")
    if not isinstance(getattr(model, "graph_spec", None), GraphSpec):
        raise TypeError(
            f"{name} is not an mfwrap backbone: it has no graph_spec (a mfwrap.data.graph.GraphSpec naming its "
            "cutoffs); see mfwrap.backbone for the contract and a worked example"
        )
    declared = getattr(model, "fidelity_spec", None)
    if declared is not None and not isinstance(declared, Mapping) and not hasattr(declared, "as_dict"):
        raise TypeError(f"{name}.fidelity_spec must be a dict of FidelitySpec fields, got {type(declared).__name__}")


def check_outputs(model: nn.Module, out: Any, structures: int) -> None:
    """TypeError unless ``out`` (from ``model(batch)`` on ``structures`` structures) is a dict with
    "energy" of shape (structures,)."""
    name = type(model).__name__
    if not isinstance(out, Mapping) or "energy" not in out:
        raise TypeError(
            f"{name}.forward must return a dict with 'energy' ((B,) total eV); it returned {type(out).__name__}"
            + (f" with keys {sorted(out)}" if isinstance(out, Mapping) else "")
        )
    energy = out["energy"]
    if not isinstance(energy, Tensor) or tuple(energy.shape) != (structures,):
        shape = tuple(energy.shape) if isinstance(energy, Tensor) else type(energy).__name__
        raise TypeError(
            f"{name}.forward returned 'energy' of shape {shape}; expected ({structures},): one total per structure"
        )
