"""``torch.compile`` for the native CHGNet: one graph per model, reused across structure sizes.

:class:`CompiledCHGNet` wraps a :class:`~backbones.chgnet.model.CHGNet` (same parameters, no copy)
and splits each call in two:

* eager, per batch: :meth:`CHGNet.topology` (index tensors; ``torch.unique`` has a data-dependent
  output size, so it stays outside the graph) and the composition energy (which multi-fidelity
  surgery may replace by a module that reads the batch object);
* compiled with ``fullgraph=True`` (no graph break allowed): :meth:`CHGNet.network` on plain
  tensors. The per-batch counts (atoms n, edges E, bonds U, short bonds S, angles A, structures
  B) are marked dynamic and traced "size-oblivious" (``backed_size_oblivious``, scoped to our
  calls), so structures of other sizes, and a single structure as well as a batch, reuse the
  compiled code instead of recompiling. One exception seen with inductor (torch 2.13): its
  identity-op removal pass (``remove_no_ops``, comparing shapes) adds the guard B ≠ 3, so a batch
  of exactly 3 structures compiles once more (which shape comparison it is was not tracked down).

Two compiled entry points:

``forward(batch)``  the backbone contract ({"energy", "magmoms"}); differentiable in positions and
    cell through AOTAutograd's compiled backward, which is not differentiable: forces for
    inference work with ``torch.autograd.grad``, but ``create_graph=True`` (force training) raises
    "torch.compile with aot_autograd does not currently support double backward"
    (pytorch/pytorch#91469, #92348; still open for inductor: #183603).
``energy_and_gradients(batch)``  energy, magmoms, ∂E/∂r and ∂E/∂ε in one graph: the derivatives
    are taken *inside* the traced function with ``torch.func.grad`` (strain ε as in
    :mod:`mfwrap.physics`), so the graph is a plain function of the parameters and force/stress
    training needs only the graph's first backward. :func:`mfwrap.physics.energy_and_derivatives`
    (hence ``mfwrap.predict`` and the trainer's loss) uses it when present. (``torch.autograd.grad``
    inside the traced function also works, but only with ``torch._dynamo.config.trace_autograd_ops
    = True``, a process-wide switch; ``torch.func.grad`` needs none.)

Usage::

    model = CHGNet.from_pretrained("0.3.0")
    fast = mfwrap.compile_model(model)           # = model.compiled() = CompiledCHGNet(model)
    preds = mfwrap.predict(fast, structures)     # first call of each kind compiles (slow)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx.experimental._config as shape_config
from torch import Tensor, nn

from backbones.chgnet.layers import Geometry, Topology
from mfwrap.data import keys as K
from mfwrap.ops import get_backend
from mfwrap.physics import deform

# The dimension of each input that is a per-batch count (marked dynamic).
_GEOMETRY_DIMS = Geometry(
    positions=0, cell=0, edge_shift=0, edge_index=1, structure=0, atomic_numbers=0, undirected_to_edge=0, angle_edges=1
)
_NUM_INDICES = len(Topology._fields) - 2  # the index tensors, (E,), (A,) or (S,); then n and U (ints)


def _mark_dynamic(geometry: Geometry, indices: tuple[Tensor, ...]) -> None:
    """Mark the count dimensions dynamic (``maybe_``: a size torch must specialise is no error)."""
    for tensor, dim in zip(geometry, _GEOMETRY_DIMS):
        torch._dynamo.maybe_mark_dynamic(tensor, dim)
    for tensor in indices:
        torch._dynamo.maybe_mark_dynamic(tensor, 0)


def _topology(geometry: Geometry, indices: tuple[Tensor, ...]) -> Topology:
    """Topology with the counts n and U taken from tensor shapes (symbolic when traced)."""
    return Topology(
        *indices, num_atoms=geometry.atomic_numbers.shape[0], num_bonds=geometry.undirected_to_edge.shape[0]
    )


class CompiledCHGNet(nn.Module):
    """A CHGNet whose tensor-only network runs through ``torch.compile`` (see the module docstring).

    Args:
        model: the CHGNet (its parameters are used, not copied; ``self.model``).
        **options: passed to ``torch.compile`` (e.g. ``backend="aot_eager"``, ``mode=``);
            ``fullgraph`` defaults to True.
    """

    def __init__(self, model: nn.Module, **options: Any) -> None:
        super().__init__()
        if not (callable(getattr(model, "topology", None)) and callable(getattr(model, "network", None))):
            raise TypeError(f"CompiledCHGNet wraps a CHGNet (topology + network), got {type(model).__name__}")
        self.model = model
        self.graph_spec = model.graph_spec
        options = {"fullgraph": True, **options}
        self.options = options
        self._network = torch.compile(self._network_eager, **options)
        self._gradients = torch.compile(self._gradients_eager, **options)

    def _network_eager(self, geometry: Geometry, indices: tuple[Tensor, ...]) -> dict[str, Tensor]:
        return self.model.network(geometry, _topology(geometry, indices))

    def _gradients_eager(
        self, geometry: Geometry, indices: tuple[Tensor, ...]
    ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        topo = _topology(geometry, indices)

        def energy(pos: Tensor, strain: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
            positions, cell = deform(pos, geometry.cell, strain, geometry.structure)
            out = self.model.network(geometry._replace(positions=positions, cell=cell), topo)
            return out[K.ENERGY].sum(), out

        strain = geometry.cell.new_zeros(geometry.cell.shape)
        (grad_pos, grad_strain), out = torch.func.grad(energy, argnums=(0, 1), has_aux=True)(geometry.positions, strain)
        return out, grad_pos, grad_strain

    def _inputs(self, batch) -> tuple[Geometry, tuple[Tensor, ...]]:
        geometry = Geometry.of(batch)
        indices = tuple(self.model.topology(batch))[:_NUM_INDICES]
        get_backend(geometry.positions.device)  # resolve (and log) the scatter backend outside the graph
        _mark_dynamic(geometry, indices)
        return geometry, indices

    def forward(self, batch) -> dict[str, Tensor]:
        """batch → {"energy": (B,) total eV, "magmoms": (n,) μB}, as :meth:`CHGNet.forward`."""
        with shape_config.patch(backed_size_oblivious=True):
            out = dict(self._network(*self._inputs(batch)))
        out[K.ENERGY] = out[K.ENERGY] + self.model.composition(batch)
        return out

    def energy_and_gradients(self, batch) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """({"energy" (B,) eV, "magmoms" (n,) μB}, ∂E/∂r (n, 3) eV/Å, ∂E/∂ε (B, 3, 3) eV) at zero strain.

        The composition energy does not depend on geometry, so it adds to the energy only.
        """
        with shape_config.patch(backed_size_oblivious=True):
            out, grad_pos, grad_strain = self._gradients(*self._inputs(batch))
        out = dict(out)
        out[K.ENERGY] = out[K.ENERGY] + self.model.composition(batch)
        return out, grad_pos, grad_strain
