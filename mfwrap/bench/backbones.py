"""The suite's backbones, one table: class path and constructor arguments per level.

What a backbone can do is read from its class (imported by path on first use, so that importing
mfwrap imports no backbone): it predicts magmoms when its ``fidelity_spec`` names output heads
besides the energy readout (under the backbone contract, :mod:`mfwrap.backbone`, magmoms are the
one other output), and it has a compiled training path when it has a ``compiled()`` method
(:func:`mfwrap.compile_model`). A new suite backbone is one entry of :data:`BACKBONES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping


def predicts_magmoms(backbone: type | object) -> bool:
    """A backbone (class or instance) names output heads besides the energy readout (``fidelity_spec["heads"]``)."""
    cls = backbone if isinstance(backbone, type) else type(backbone)
    return bool(dict(getattr(cls, "fidelity_spec", {})).get("heads"))


@dataclass(frozen=True)
class SuiteBackbone:
    """One backbone of the suite.

    Attributes:
        name: the name in run specs, run directories and ``mfwrap bench --backbone``.
        class_path: "module:Class" of the backbone (:func:`mfwrap.model_file.import_class`).
        kwargs: constructor arguments per level name (:data:`mfwrap.bench.grid.LEVELS`).
        note: what it needs beyond mfwrap's own dependencies ("" if nothing).
    """

    name: str
    class_path: str
    kwargs: Mapping[str, Mapping[str, Any]]
    note: str = ""

    def kwargs_at(self, level: str) -> dict[str, Any]:
        """Constructor arguments at ``level``; ValueError if the table has none for it."""
        if level not in self.kwargs:
            raise ValueError(f"backbone {self.name!r} has no arguments for level {level!r}; it has {list(self.kwargs)}")
        return dict(self.kwargs[level])

    def load(self) -> type:
        """The backbone class (imports its module)."""
        from mfwrap.model_file import import_class

        return import_class(self.class_path)

    @property
    def predicts_magmoms(self) -> bool:
        """The class names output heads besides the energy readout (``fidelity_spec["heads"]``)."""
        return predicts_magmoms(self.load())

    @property
    def compilable(self) -> bool:
        """The class has a compiled path (a ``compiled()`` method, :func:`mfwrap.compile_model`)."""
        return callable(getattr(self.load(), "compiled", None))


TINY_CHGNET = {
    "atom_fea_dim": 16,
    "bond_fea_dim": 16,
    "angle_fea_dim": 16,
    "num_radial": 9,
    "num_angular": 9,
    "n_conv": 2,
    "atom_conv_hidden_dim": 16,
    "bond_conv_hidden_dim": 16,
    "mlp_hidden_dims": [16],
}
TINY_SCHNET = {"hidden_channels": 16, "num_filters": 16, "num_interactions": 2, "num_gaussians": 16, "cutoff": 5.0}
PAPER_SCHNET = {"hidden_channels": 64, "num_filters": 64, "num_interactions": 3, "num_gaussians": 50, "cutoff": 5.0}
TINY_M3GNET = {
    "dim_node_embedding": 16,
    "dim_edge_embedding": 16,
    "units": 16,
    "nblocks": 2,
    "cutoff": 5.0,
    "threebody_cutoff": 4.0,
}
M3GNET = {"cutoff": 5.0, "threebody_cutoff": 4.0}  # matgl's defaults otherwise (64 units, 3 blocks)

# quick: tiny networks (a test of the pipeline); medium and full: CHGNet at its class defaults (the
# seed paper's), SchNet at 64 features and 3 interactions, M3GNet at matgl's defaults.
BACKBONES: Mapping[str, SuiteBackbone] = MappingProxyType(
    {
        backbone.name: backbone
        for backbone in (
            SuiteBackbone("chgnet", "backbones.chgnet:CHGNet", {"quick": TINY_CHGNET, "medium": {}, "full": {}}),
            SuiteBackbone(
                "schnet", "backbones.pyg:SchNet", {"quick": TINY_SCHNET, "medium": PAPER_SCHNET, "full": PAPER_SCHNET}
            ),
            SuiteBackbone(
                "m3gnet",
                "backbones.matgl:MatglM3GNet",
                {"quick": TINY_M3GNET, "medium": M3GNET, "full": M3GNET},
                note="needs mfwrap[matgl]",
            ),
        )
    }
)
