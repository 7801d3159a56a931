"""Probe structures for a backbone, and what its layers output on them.

Module surgery (which kind of rows each place produces, :mod:`mfwrap.surgery`) and the symmetry
checks (which places rotate with the structure, whether the wrapped model stays invariant,
:mod:`mfwrap.symmetry`) run the backbone on the same two small structures, made of elements it
knows (:func:`probe_elements`), and read the outputs of chosen layers with forward hooks
(:func:`layer_outputs`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from ase import Atoms
from torch import Tensor, nn
from torch_geometric.data import Batch

from mfwrap.data.graph import GraphSpec, to_graph

DEFAULT_PROBE_ELEMENTS = (8, 3, 26, 15)  # O, Li, Fe, P


def probe_elements(model: nn.Module) -> tuple[int, int, int, int]:
    """Four atomic numbers for the probe structures: O, Li, Fe, P, unless the model (or the
    backbone it wraps) lists the elements it knows in ``supported_numbers``; then the first four of
    those (repeated if fewer)."""
    supported = getattr(model, "supported_numbers", None)
    if supported is None and isinstance(getattr(model, "backbone", None), nn.Module):
        supported = getattr(model.backbone, "supported_numbers", None)
    if supported is None:
        return DEFAULT_PROBE_ELEMENTS
    numbers = sorted({int(z) for z in supported})
    if not numbers:
        raise ValueError(f"{type(model).__name__}.supported_numbers is empty")
    return tuple(numbers[i % len(numbers)] for i in range(4))  # type: ignore[return-value]


def probe_structures(spec: GraphSpec, elements: Sequence[int] = DEFAULT_PROBE_ELEMENTS, seed: int = 0) -> list[Atoms]:
    """A triangle and a tetrahedron of atoms, bonds d = half the shortest cutoff, each position moved
    by N(0, (0.08 d)²) (``seed``) so that no angle or distance is special, in periodic boxes wider than
    three cutoffs (no periodic image is a neighbour). ``elements`` (a, b, c, d): the triangle is
    a b c, the tetrahedron d a a b.

    Their graph has 7 atoms, 18 edges, 9 undirected bonds, 30 angles and 2 structures: every row kind
    has a different count, so the number of rows of a layer's output names its kind.
    """
    rng = np.random.default_rng(seed)
    d = 0.5 * min(spec.cutoff, spec.line_graph_cutoff or spec.cutoff)
    triangle = np.array([[0, 0, 0], [d, 0, 0], [d / 2, d * np.sqrt(3) / 2, 0]])
    tetrahedron = np.vstack([triangle, [d / 2, d * np.sqrt(3) / 6, d * np.sqrt(2.0 / 3.0)]])
    box = np.eye(3) * (3 * spec.cutoff + 2 * d)
    a, b, c, d_ = elements
    return [
        Atoms(numbers, positions=positions + rng.normal(0, 0.08 * d, positions.shape) + 1.0, cell=box, pbc=True)
        for numbers, positions in (([a, b, c], triangle), ([d_, a, a, b], tetrahedron))
    ]


def batch_for(model: nn.Module, structures: Sequence[Atoms]) -> Batch:
    """``structures`` as one batch of ``model``'s graphs, in the dtype of its parameters, on their device."""
    parameter = next(model.parameters())
    graphs = [to_graph(s, model.graph_spec, dtype=parameter.dtype, name="probe") for s in structures]
    return Batch.from_data_list(graphs).to(parameter.device)


def probe_batch(model: nn.Module) -> Batch:
    """The probe structures (:func:`probe_structures`, of the model's graph spec and
    :func:`probe_elements`) as one batch for ``model``."""
    return batch_for(model, probe_structures(model.graph_spec, probe_elements(model)))


def layer_outputs(model: nn.Module, paths: Sequence[str], batch: Batch) -> tuple[Any, dict[str, list[Tensor | None]]]:
    """``model(batch)`` in evaluation mode without gradients, and {path: the output of every call of
    the submodule at ``path``, in call order}: a detached copy, or None for an output that is not a
    tensor. The model's training mode is restored and its hooks removed afterwards."""
    modules = dict(model.named_modules())
    outputs: dict[str, list[Tensor | None]] = {path: [] for path in paths}

    def recorder(path: str):
        def record(module: nn.Module, args: Any, out: Any) -> None:
            outputs[path].append(out.detach().clone() if isinstance(out, Tensor) else None)

        return record

    handles = [modules[path].register_forward_hook(recorder(path)) for path in paths]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            out = model(batch)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return out, outputs
