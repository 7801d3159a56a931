"""Any potential with PyG's ``forward(z, pos, batch)`` as an mfwrap backbone (molecules and clusters).

Many PyG potentials (``torch_geometric.nn.models.SchNet``, ``DimeNetPlusPlus``, ViSNet, PaiNN-style
user models) take atomic numbers, positions and the structure index of each atom and build their
own graph inside ``forward`` with ``radius_graph`` on raw positions. Such a forward sees no cell and
no periodic images, so it is exact for molecules and clusters and wrong for crystals. This adapter
calls the model's own forward unchanged, keeps its weights, and refuses a structure in which any
atom has a periodic image of a neighbour within the cutoff (the model would miss those
neighbours), naming the structure. For crystals, use an adapter that feeds the model mfwrap's
periodic graph (``backbones.pyg.SchNet.from_pyg``, ``DimeNetPlusPlus.from_pyg``) or write one
(:mod:`mfwrap.backbone`).

Forces and stress come from :mod:`mfwrap.physics` by autograd through the positions the model
reads; the fidelity mechanisms go in by surgery on the wrapped model's modules (paths start with
``model.``), e.g. ``spec={"embedding": "model.embedding", "message": ["model.interactions.*"],
"readout": ["model.lin1", "model.lin2"]}`` for PyG's SchNet.
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor, nn

from mfwrap.data import keys as K
from mfwrap.data.graph import GraphSpec, structure_index
from mfwrap.model_file import import_class


class PositionsModel(nn.Module):
    r"""``E_b = model(z, pos, batch)_b`` (eV) for a model that builds its own non-periodic graph.

    Args:
        model_class: "package.module:Class" of the model, with ``model_kwargs`` its constructor's
            keyword arguments: the adapter builds it (this is how a saved model is rebuilt).
        model_kwargs: see ``model_class``.
        cutoff: the model's interaction cutoff in Å (default: the model's ``cutoff`` attribute);
            mfwrap's graph uses it to find periodic neighbours and for surgery's probe.

    Use :meth:`wrap` for a model object that already exists (e.g. trained). It can be saved with
    the wrapper only when ``model_kwargs`` is given (the constructor's arguments are not
    recoverable from an arbitrary object).
    """

    def __init__(
        self, model_class: str, model_kwargs: Mapping[str, Any] | None = None, cutoff: float | None = None
    ) -> None:
        super().__init__()
        self._setup(import_class(model_class)(**dict(model_kwargs or {})), cutoff, model_class, model_kwargs or {})

    @classmethod
    def wrap(
        cls, model: nn.Module, cutoff: float | None = None, model_kwargs: Mapping[str, Any] | None = None
    ) -> "PositionsModel":
        """The adapter around an existing ``model`` (its weights kept, shared)."""
        adapter = cls.__new__(cls)
        nn.Module.__init__(adapter)
        kind = type(model)
        adapter._setup(model, cutoff, f"{kind.__module__}:{kind.__qualname__}", model_kwargs)
        return adapter

    def _setup(
        self, model: nn.Module, cutoff: float | None, model_class: str, model_kwargs: Mapping[str, Any] | None
    ) -> None:
        cutoff = getattr(model, "cutoff", None) if cutoff is None else cutoff
        if not isinstance(cutoff, (int, float)) or cutoff <= 0:
            raise ValueError(
                f"{type(model).__name__} has no numeric `cutoff` attribute: pass cutoff= (Å), the radius "
                "within which its forward builds its graph"
            )
        self.model = model
        self.graph_spec = GraphSpec(cutoff=float(cutoff))
        self._config = (
            None
            if model_kwargs is None
            else {"model_class": model_class, "model_kwargs": dict(model_kwargs), "cutoff": float(cutoff)}
        )

    @property
    def config(self) -> dict[str, Any]:
        if self._config is None:
            raise AttributeError("config")  # describe_model then says it cannot be rebuilt: wrap(..., model_kwargs=)
        return self._config

    def forward(self, batch) -> dict[str, Tensor]:
        """batch → {"energy": (B,)}; a periodic neighbour within the cutoff is an error (one check per call)."""
        shifts = batch[K.EDGE_SHIFT]
        periodic = shifts.ne(0).any(dim=-1)
        if bool(periodic.any()):
            centre = batch[K.EDGE_INDEX][1][periodic]
            which = sorted(set(structure_index(batch)[centre].tolist()))
            raise ValueError(
                f"structure(s) {which[:10]} of the batch have periodic images of neighbours within "
                f"{self.graph_spec.cutoff} Å; {type(self.model).__name__}'s forward builds its own non-periodic graph "
                "and would miss them. Use a larger box (molecules, clusters) or an adapter that feeds it "
                "mfwrap's periodic graph (backbones.pyg)"
            )
        count = batch[K.CELL].shape[0]
        energy = self.model(batch[K.ATOMIC_NUMBERS], batch[K.POSITIONS], structure_index(batch))
        energy = energy.reshape(-1)
        if energy.shape[0] != count:
            raise ValueError(
                f"{type(self.model).__name__} returned {energy.shape[0]} energies for {count} structures; "
                "expected one per structure"
            )
        return {K.ENERGY: energy}

    def extra_repr(self) -> str:
        return f"cutoff={self.graph_spec.cutoff}"
