"""``mfwrap.MultiFidelity``: a multi-fidelity potential made from any single-fidelity backbone.

    mf = MultiFidelity(backbone, fidelities=["pbe", "r2scan"], mechanisms="ECMR")
    mf = MultiFidelity(backbone, ["pbe", "r2scan"], "ECMR", readout="residual")  # shared readout + residuals
    mf = MultiFidelity(CHGNet.from_pretrained("0.3.0"), ["mptrj_pbe", "r2scan"], origin="mptrj_pbe")

E (fidelity embedding), C (composition per fidelity), M (one-hot-augmented message linear
layers), R (readout per fidelity) are inserted by module surgery (:mod:`mfwrap.surgery`) into
a copy of the backbone; the backbone's code is not touched. At initialisation every fidelity
reproduces the backbone exactly; an ``origin`` fidelity keeps the backbone's composition model
(a pretrained model gaining a fidelity keeps what it was). ``mf(batch)`` returns the backbone's
dict ("energy" (B,) total eV, "magmoms" if the backbone has them) with each structure at the
fidelity ``batch.fidelity``.
"""

from __future__ import annotations

import copy
import os
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch_geometric.data import Data

from mfwrap.backbone import check_backbone
from mfwrap.data import keys as K
from mfwrap.data.graph import GraphSpec
from mfwrap.fidelity import FidelityContext, check_batch_fidelities, resolve_fidelity, validate_fidelity_names
from mfwrap.mechanisms import FidelityComposition
from mfwrap.mechanisms.composition_fit import fit_per_fidelity, fit_shared_composition
from mfwrap.model_file import describe_model, read_model_file, save_model
from mfwrap.surgery import FidelitySpec, SurgeryReport, operate, parse_mechanisms, resolve_spec
from mfwrap.symmetry import check_wrapped_model


class MultiFidelity(nn.Module):
    """A backbone with fidelity-dependent embedding, composition, message layers and readout.

    Args:
        backbone: an mfwrap backbone (:mod:`mfwrap.backbone`: ``graph_spec``, ``forward(batch) ->
            dict``, ``config``); it is deep copied, the original stays as it was.
        fidelities: names of the fidelities (≥ 1), e.g. ``["pbe", "r2scan"]``; index f = position.
        mechanisms: any subset of "ECMR" ("" = the plain backbone with shared heads).
        readout: how R makes a readout per fidelity: "copies" (the paper's: independent copies,
            copy f trained by fidelity f's rows only) or "residual" (one shared readout, trained by
            every row, plus a per-fidelity residual on each of its parameters, zero at the start:
            :class:`~mfwrap.mechanisms.ResidualFidelityReadout`). Ignored without R.
        spec: where the mechanisms go (:class:`~mfwrap.surgery.FidelitySpec` or dict); default:
            the backbone's ``fidelity_spec``, else heuristics (with a warning saying what they chose).
        row_kinds: {module-path pattern: "atom" | "edge" | "undirected" | "angle" | "structure"}
            overriding the probe's detection of what the rows of a place are.
        check_symmetry: refuse E and M places whose outputs rotate with the structure (vector or
            tensor features: an error for a given or declared spec, skipped and reported for
            heuristics), and after the surgery check on a float64 copy with randomised fidelity
            parameters that energies stay invariant and forces equivariant under rotation,
            translation and permutation at every fidelity (:mod:`mfwrap.symmetry`); a ValueError
            names the places that break it. The result is in ``surgery.symmetry``. False skips both.
        origin: the fidelity that *is* the backbone (a pretrained model's level of theory), or None.
            Every fidelity starts equal to the backbone; the origin's composition weights are never
            refitted (:meth:`fit_composition`), so it stays the pretrained model but for what training
            its shared network changes, and new fidelities start as copies of it (:meth:`add_fidelity`).

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
        spec: FidelitySpec | Mapping[str, Any] | None = None,
        row_kinds: Mapping[str, str] | None = None,
        check_symmetry: bool = True,
        readout: str = "copies",
        origin: str | None = None,
    ) -> None:
        super().__init__()
        self.fidelity_names = validate_fidelity_names(fidelities)
        if origin is not None:
            resolve_fidelity(self.fidelity_names, origin, option="origin=")
        self.origin = origin
        self.mechanisms = parse_mechanisms(mechanisms)
        self.readout = readout
        check_backbone(backbone)
        self.backbone = copy.deepcopy(backbone)
        self.context = FidelityContext(len(self.fidelity_names))
        resolved, source = resolve_spec(self.backbone, spec)
        self.surgery: SurgeryReport
        self.surgery, self.composition = operate(
            self.backbone,
            self.mechanisms,
            self.context,
            resolved,
            source,
            row_kinds,
            refuse_rotating=check_symmetry,
            readout=readout,
        )
        self.surgery.symmetry = (
            check_wrapped_model(self) if check_symmetry else "symmetry not checked (check_symmetry=False)"
        )

    @property
    def graph_spec(self) -> GraphSpec:
        return self.backbone.graph_spec

    @property
    def spec(self) -> FidelitySpec:
        return self.surgery.spec

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this architecture (:mod:`mfwrap.model_file`)."""
        return {
            "backbone": self.backbone,
            "fidelities": list(self.fidelity_names),
            "mechanisms": self.mechanisms,
            "spec": self.spec.as_dict(),
            "row_kinds": {path: kind for _, path, _, kind in self.surgery.places},
            "readout": self.readout,
            "origin": self.origin,
        }

    def forward(self, batch: Data) -> dict[str, Tensor]:
        """batch (with ``fidelity`` per structure) → the backbone's dict, each structure at its fidelity."""
        with self.evaluating(batch):
            return self.with_composition(self.backbone(batch))

    @contextmanager
    def evaluating(self, batch: Data, *, dense: bool = False) -> Iterator[None]:
        """The fidelity context bound to ``batch`` (its indices checked) for one run of the backbone's
        network: this forward's, or a compiled network's (``dense``: the context's dense mode and an
        asynchronous index check, :func:`~mfwrap.fidelity.check_batch_fidelities`)."""
        uniform = check_batch_fidelities(batch, self.fidelity_names, asynchronous=dense)
        with self.context.bound(batch, uniform, dense=dense):
            yield

    def with_composition(self, out: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The network's outputs ``out`` with the added composition energy (mechanism C when it
        replaced no module of the backbone) in ``energy``; inside :meth:`evaluating`."""
        out = dict(out)
        if self.composition is not None:
            out[K.ENERGY] = out[K.ENERGY] + self.composition()
        return out

    def fidelity_modules(self) -> list[nn.Module]:
        """Every module the surgery inserted (each has ``add_fidelity``)."""
        return [m for m in self.modules() if m is not self and getattr(m, "context", None) is self.context]

    def add_fidelity(self, name: str, like: str | None = None) -> None:
        """Add fidelity ``name``, initialised as a copy of fidelity ``like`` (default: the origin, else the first).

        Its predictions equal those of ``like`` until trained. Fidelity parameters are replaced by
        larger ones, so create the optimiser after calling this.
        """
        names = validate_fidelity_names([*self.fidelity_names, name])
        like = like if like is not None else self.origin or self.fidelity_names[0]
        source = resolve_fidelity(self.fidelity_names, like)
        for module in self.fidelity_modules():
            module.add_fidelity(source)
        self.context.num_fidelities += 1
        self.fidelity_names = names

    def draw_fidelity_parameters(self) -> None:
        """Draw every fidelity parameter at random instead of the identity start: X_f like a row of
        the embedding table, W_F like the one-hot columns of one ``nn.Linear`` over [a, onehot(f)],
        readout copies 1.. re-initialised independently (each mechanism's ``draw_at_random``; the
        global torch RNG, so seed it first). The fidelities then do not start equal to the
        backbone: this is the start of an implementation written from scratch, the alternative to
        the identity start (``ModelConfig.fidelity_init``). On a pretrained backbone it discards the
        pretrained readout in copies 1..; the composition model is fitted, not drawn.
        """
        for module in self.fidelity_modules():
            draw = getattr(module, "draw_at_random", None)
            if draw is not None:
                draw()

    def fit_composition(self, graphs: Sequence[Data], ridge: float = 1e-6, residual: bool = False) -> None:
        """Fit composition weights by regularised least squares on the energy labels of ``graphs``;
        ``residual``: a correction fitted to E − E_model, this model's own prediction
        (:mod:`mfwrap.mechanisms.composition_fit`).

        With C: one weight vector per fidelity (:func:`mfwrap.mechanisms.composition_fit.fit_per_fidelity`),
        the origin's kept. Without C: the backbone's own composition module, shared by all fidelities,
        on all graphs (an error if the spec names none, as for the plain backbone); with an origin it
        is the origin's, so it is kept.
        """
        table = self._composition_table()
        keep = [resolve_fidelity(self.fidelity_names, self.origin)] if self.origin is not None else []
        if table is not None:
            fit_per_fidelity(table, graphs, ridge=ridge, reference=self if residual else None, keep=keep)
            return
        if keep:
            return
        if self.spec.composition is None:
            raise ValueError(
                f"{type(self.backbone).__name__} has no composition model named in its fidelity spec and "
                "mechanism C is off: add C, give the backbone a composition module, "
                "or train with fit_composition: false"
            )
        fit_shared_composition(self.backbone, self.spec.composition, graphs, ridge=ridge, residual=residual)

    def _composition_table(self) -> FidelityComposition | None:
        return next((m for m in self.fidelity_modules() if isinstance(m, FidelityComposition)), None)

    def compiled(self, **options: Any) -> nn.Module:
        """This model with its backbone's network under ``torch.compile``
        (:class:`mfwrap.compile.CompiledMultiFidelity`)."""
        from mfwrap.compile import CompiledMultiFidelity  # compile.py does not import this module

        return CompiledMultiFidelity(self, **options)

    def export(self, fidelity: str) -> nn.Module:
        """The plain backbone with fidelity ``fidelity`` folded in (:func:`mfwrap.export.export_fidelity`)."""
        from mfwrap.export import export_fidelity  # export.py imports this module

        return export_fidelity(self, fidelity)

    def save(self, path: str | os.PathLike) -> None:
        """Write the model (architecture and weights) to ``path`` atomically (:mod:`mfwrap.model_file`)."""
        save_model(self, path, architecture=describe_model(self))


def save(model: nn.Module, path: str | os.PathLike) -> None:
    """Write any mfwrap model (a backbone, e.g. a pretrained foundation model, a :class:`MultiFidelity`,
    a Δ model) to ``path`` atomically, as :func:`load` reads it (:mod:`mfwrap.model_file`)."""
    save_model(model, path, architecture=describe_model(model))


def load(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> nn.Module:
    """Read a model from an mfwrap file: :meth:`MultiFidelity.save`'s or a trainer checkpoint
    (``best.pt``, ``last.pt``), of any backbone or method. Reading runs no code from the file;
    corrupt, foreign or mismatched files raise ValueError."""
    return read_model_file(path, map_location)[0]
