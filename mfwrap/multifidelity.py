"""``mfwrap.MultiFidelity``: a multi-fidelity potential made from any single-fidelity backbone.

    mf = MultiFidelity(backbone, fidelities=["pbe", "r2scan"], mechanisms="ECMR")

E (fidelity embedding), C (composition per fidelity), M (one-hot-augmented message linear
layers), R (readout per fidelity) are inserted by module surgery (:mod:`mfwrap.surgery`) into
a copy of the backbone; the backbone's code is not touched. At initialisation every fidelity
reproduces the backbone exactly. ``mf(batch)`` returns the backbone's dict ("energy" (B,) total
eV, "magmoms" if the backbone has them) with each structure at the fidelity ``batch.fidelity``.
"""

from __future__ import annotations

import copy
import importlib
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch_geometric.data import Data

from mfwrap.composition import FidelityComposition, fit_linear_composition, read_element_energies, write_element_energies
from mfwrap.data import keys as K
from mfwrap.data.graph import GraphSpec
from mfwrap.fidelity import FidelityContext, validate_fidelity_names
from mfwrap.surgery import BackboneSpec, SurgeryReport, operate, parse_mechanisms, resolve_spec

FORMAT = "mfwrap.MultiFidelity"
FORMAT_VERSION = 1


class MultiFidelity(nn.Module):
    """A backbone with fidelity-dependent embedding, composition, message layers and readout.

    Args:
        backbone: an mfwrap backbone (``graph_spec`` and ``forward(batch) -> dict``); it is deep
            copied, the original stays as it was.
        fidelities: names of the fidelities (≥ 1), e.g. ``["pbe", "r2scan"]``; index f = position.
        mechanisms: any subset of "ECMR" ("" = the plain backbone with shared heads).
        spec: where the mechanisms go (:class:`~mfwrap.surgery.BackboneSpec` or dict); default:
            the backbone's ``fidelity_spec``, else heuristics (with a warning saying what they chose).
        row_kinds: {module-path pattern: "atom" | "edge" | "undirected" | "angle" | "structure"}
            overriding the probe's detection of what the rows of a place are.

    Attributes:
        fidelity_names: tuple of names. ``surgery``: a :class:`~mfwrap.surgery.SurgeryReport`
        (print it to see every touched module). ``graph_spec``: the backbone's.
    """

    def __init__(
        self,
        backbone: nn.Module,
        fidelities: Sequence[str],
        mechanisms: str = "ECMR",
        *,
        spec: BackboneSpec | Mapping[str, Any] | None = None,
        row_kinds: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.fidelity_names = validate_fidelity_names(fidelities)
        self.mechanisms = parse_mechanisms(mechanisms)
        if not isinstance(getattr(backbone, "graph_spec", None), GraphSpec):
            raise TypeError(f"{type(backbone).__name__} is not an mfwrap backbone: it has no graph_spec")
        self.backbone = copy.deepcopy(backbone)
        self.context = FidelityContext(len(self.fidelity_names))
        resolved, source = resolve_spec(self.backbone, spec)
        self.surgery: SurgeryReport
        self.surgery, self.composition = operate(self.backbone, self.mechanisms, self.context, resolved, source, row_kinds)

    @property
    def graph_spec(self) -> GraphSpec:
        return self.backbone.graph_spec

    @property
    def spec(self) -> BackboneSpec:
        return self.surgery.spec

    def fidelity_index(self, name: str | None) -> int:
        """Index of fidelity ``name``; None is allowed only for a model with one fidelity."""
        if name is None:
            if len(self.fidelity_names) == 1:
                return 0
            raise ValueError(f"this model has {len(self.fidelity_names)} fidelities {list(self.fidelity_names)}: name one")
        if name not in self.fidelity_names:
            raise ValueError(f"unknown fidelity {name!r}; this model has {list(self.fidelity_names)}")
        return self.fidelity_names.index(name)

    def forward(self, batch: Data) -> dict[str, Tensor]:
        """batch (with ``fidelity`` per structure) → the backbone's dict, each structure at its fidelity."""
        if K.FIDELITY not in batch:
            raise KeyError(f"the batch has no '{K.FIDELITY}' (per-structure fidelity index); build graphs with to_graph(..., fidelity=)")
        lowest, highest = torch.stack(torch.aminmax(batch[K.FIDELITY].reshape(-1))).tolist()
        if lowest < 0 or highest >= len(self.fidelity_names):
            raise ValueError(
                f"batch fidelity indices {sorted(set(batch[K.FIDELITY].tolist()))} out of range for fidelities {list(self.fidelity_names)}"
            )
        with self.context.bound(batch, lowest if lowest == highest else None):
            out = dict(self.backbone(batch))
            if self.composition is not None:
                out[K.ENERGY] = out[K.ENERGY] + self.composition()
        return out

    def fidelity_modules(self) -> list[nn.Module]:
        """Every module the surgery inserted (each has ``add_fidelity``)."""
        return [m for m in self.modules() if m is not self and getattr(m, "context", None) is self.context]

    def add_fidelity(self, name: str, like: str | None = None) -> None:
        """Add fidelity ``name``, initialised as a copy of fidelity ``like`` (default: the first).

        Its predictions equal those of ``like`` until trained. Fidelity parameters are replaced by
        larger ones, so create the optimiser after calling this.
        """
        names = validate_fidelity_names([*self.fidelity_names, name])
        source = self.fidelity_index(like if like is not None else self.fidelity_names[0])
        for module in self.fidelity_modules():
            module.add_fidelity(source)
        self.context.num_fidelities += 1
        self.fidelity_names = names

    def fit_composition(self, graphs: Sequence[Data], ridge: float = 1e-6) -> None:
        """Fit composition weights by regularised least squares on the energy labels of ``graphs``.

        With C: one weight vector per fidelity from that fidelity's labelled graphs, pulled
        (``ridge``) towards the fit over all fidelities; an element absent from a fidelity's data
        takes the all-fidelity value, and one absent from all data keeps the backbone's own
        composition weight (0 if it has none). Without C: the backbone's shared composition module
        is fitted on all graphs (an error if the spec names none).
        """
        table = self._composition_table()
        if table is None:
            path = self.spec.composition
            if path is None:
                raise ValueError("nothing to fit: mechanism C is off and the backbone's spec names no composition module")
            module = self.backbone.get_submodule(path)
            write_element_energies(module, fit_linear_composition(graphs, ridge=ridge, prior=read_element_energies(module)))
            return
        fidelities = torch.cat([g[K.FIDELITY].reshape(-1) for g in graphs]).tolist()
        if any(f < 0 or f >= len(self.fidelity_names) for f in fidelities):
            raise ValueError(f"graph fidelity indices {sorted(set(fidelities))} out of range for {list(self.fidelity_names)}")
        pooled = fit_linear_composition(graphs, ridge=ridge, prior=table.initial)
        weights = []
        for f in range(len(self.fidelity_names)):
            own = [g for g, gf in zip(graphs, fidelities) if gf == f and bool(g[K.mask_key(K.ENERGY)].all())]
            weights.append(fit_linear_composition(own, ridge=ridge, prior=pooled) if own else pooled)
        with torch.no_grad():
            table.element_energies.copy_(torch.stack(weights))

    def _composition_table(self) -> FidelityComposition | None:
        return next((m for m in self.fidelity_modules() if isinstance(m, FidelityComposition)), None)

    def save(self, path: str | os.PathLike) -> None:
        """Write the model to ``path`` atomically (a temporary file, then a rename)."""
        config = getattr(self.backbone, "config", None)
        if not isinstance(config, Mapping):
            raise TypeError(f"{type(self.backbone).__name__} has no `config` dict of constructor arguments; cannot save it")
        cls = type(self.backbone)
        payload = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "backbone_class": f"{cls.__module__}:{cls.__qualname__}",
            "backbone_config": dict(config),
            "spec": self.spec.as_dict(),
            "fidelities": list(self.fidelity_names),
            "mechanisms": self.mechanisms,
            "row_kinds": {path: kind for _, path, _, kind in self.surgery.places},
            "state_dict": self.state_dict(),
        }
        target = Path(path)
        handle, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as stream:
                torch.save(payload, stream)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def load(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> MultiFidelity:
    """Read a model written by :meth:`MultiFidelity.save`; corrupt or mismatched files raise ValueError."""
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # torch raises many types for damaged files
        raise ValueError(f"{path}: not a readable mfwrap model file (corrupt or truncated?): {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not an mfwrap MultiFidelity file")
    if payload.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: file format version {payload.get('version')}, this mfwrap reads {FORMAT_VERSION}")
    missing = {"backbone_class", "backbone_config", "spec", "fidelities", "mechanisms", "row_kinds", "state_dict"} - set(payload)
    if missing:
        raise ValueError(f"{path}: incomplete mfwrap file, missing {sorted(missing)}")
    module_name, _, qualname = payload["backbone_class"].partition(":")
    try:
        cls: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            cls = getattr(cls, part)
        backbone = cls(**payload["backbone_config"])
    except Exception as error:
        raise ValueError(f"{path}: cannot rebuild backbone {payload['backbone_class']}: {error}") from error
    model = MultiFidelity(backbone, payload["fidelities"], payload["mechanisms"], spec=payload["spec"], row_kinds=payload["row_kinds"])
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        raise ValueError(f"{path}: weights do not match the rebuilt model: {error}") from error
    return model.to(map_location) if map_location is not None else model
