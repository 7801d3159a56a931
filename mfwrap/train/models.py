"""Building, describing and re-loading the models the trainer handles.

A *model spec* is a JSON-able dict that says how to rebuild a model's architecture; checkpoints
store it next to the weights, so ``mfwrap evaluate`` / ``predict`` can load any of:

    {"kind": "backbone", "class": "backbones.chgnet:CHGNet", "config": {...constructor args}}
    {"kind": "multi_fidelity", "backbone": {...as above}, "fidelities": [...], "mechanisms": "ECMR",
     "spec": {...BackboneSpec}, "row_kinds": {...}}
    {"kind": "delta", "base": {...}, "delta": {...}}

A backbone is describable when it has a ``config`` dict of constructor arguments (as the native
CHGNet has), like :meth:`mfwrap.MultiFidelity.save` requires.
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch, Data

from mfwrap.data import keys as K
from mfwrap.multifidelity import MultiFidelity


def import_object(path: str) -> Any:
    """The object named "package.module:Qualified.name"."""
    module_name, _, qualname = path.partition(":")
    if not qualname:
        raise ValueError(f"expected 'module:name', got {path!r}")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


class DeltaModel(nn.Module):
    """Δ-learning: a frozen low-fidelity ``base`` plus a learned correction ``delta``.

        E_high(x) = E_base(x) + E_Δ(x)          (eV; forces and stress follow by autograd)
        m_high(x) = m_Δ(x)                      (μB; the low fidelity has no magmom labels)

    Both networks read the same graph (their ``graph_spec`` must be equal). Training fits only
    ``delta``; the base's parameters are frozen when the model is built.
    """

    def __init__(self, base: nn.Module, delta: nn.Module) -> None:
        super().__init__()
        if base.graph_spec != delta.graph_spec:
            raise ValueError(f"base and delta read different graphs: {base.graph_spec} vs {delta.graph_spec}")
        self.base, self.delta = base, delta
        self.base.requires_grad_(False)
        self.graph_spec = delta.graph_spec

    def forward(self, batch: Data) -> dict[str, Tensor]:
        out = dict(self.delta(batch))
        out[K.ENERGY] = out[K.ENERGY] + self.base(batch)[K.ENERGY]
        return out

    def fit_composition(self, graphs: Sequence[Data]) -> None:
        """Fit the correction's composition model to E_label − E_base (least squares)."""
        from mfwrap.train.trainer import fit_composition  # the trainer imports this module

        residual = []
        self.base.eval()
        device = next(self.base.parameters()).device
        for start in range(0, len(graphs), 16):
            batch = Batch.from_data_list(list(graphs[start : start + 16])).to(device)
            with torch.no_grad():
                base_energy = self.base(batch)[K.ENERGY].cpu()
            for graph, energy in zip(graphs[start : start + 16], base_energy):
                shifted = graph.clone()
                shifted[K.ENERGY] = graph[K.ENERGY] - energy.to(graph[K.ENERGY].dtype)
                residual.append(shifted)
        fit_composition(self.delta, residual)


def _backbone_entry(backbone: nn.Module) -> dict[str, Any]:
    config = getattr(backbone, "config", None)
    if not isinstance(config, Mapping):
        raise TypeError(f"{type(backbone).__name__} has no `config` dict of constructor arguments; it cannot be described")
    cls = type(backbone)
    return {"class": f"{cls.__module__}:{cls.__qualname__}", "config": dict(config)}


def describe_model(model: nn.Module) -> dict[str, Any]:
    """The model spec of ``model`` (see the module docstring); TypeError if it cannot be described."""
    if isinstance(model, DeltaModel):
        return {"kind": "delta", "base": describe_model(model.base), "delta": describe_model(model.delta)}
    if isinstance(model, MultiFidelity):
        return {"kind": "multi_fidelity", "backbone": _backbone_entry(model.backbone),
                "fidelities": list(model.fidelity_names), "mechanisms": model.mechanisms, "spec": model.spec.as_dict(),
                "row_kinds": {path: kind for _, path, _, kind in model.surgery.places}}
    return {"kind": "backbone", **_backbone_entry(model)}


def rebuild_model(spec: Mapping[str, Any]) -> nn.Module:
    """A model with the architecture ``spec`` describes (weights: fresh; load a state dict next)."""
    kind = spec.get("kind")
    if kind == "backbone":
        return import_object(spec["class"])(**spec["config"])
    if kind == "multi_fidelity":
        backbone = rebuild_model({"kind": "backbone", **spec["backbone"]})
        return MultiFidelity(backbone, spec["fidelities"], spec["mechanisms"], spec=spec["spec"], row_kinds=spec["row_kinds"])
    if kind == "delta":
        return DeltaModel(rebuild_model(spec["base"]), rebuild_model(spec["delta"]))
    raise ValueError(f"unknown model kind {kind!r} in model spec")


def load_trained(path: str, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """(model with trained weights, checkpoint dict) from a trainer checkpoint (best.pt or last.pt)."""
    from mfwrap.train.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(path, map_location=map_location)
    if not checkpoint.get("model_spec"):
        raise ValueError(f"{path} has no model spec (its backbone has no `config`), so it cannot be rebuilt")
    model = rebuild_model(checkpoint["model_spec"])
    try:
        model.load_state_dict(checkpoint["model_state"])
    except RuntimeError as error:
        raise ValueError(f"{path}: weights do not match the rebuilt model: {error}") from error
    return model.to(map_location), checkpoint
