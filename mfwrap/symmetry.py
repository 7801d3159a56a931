"""Does a wrapped model keep its backbone's symmetries? A check that runs after every surgery.

A fidelity term added to a layer that carries vector or tensor features (rows × components ×
channels) breaks rotational symmetry silently: the model trains, and its energy then depends on
the orientation of the structure. :func:`symmetry_violations` evaluates a float64 copy of the
wrapped model with every fidelity parameter randomised (so that each mechanism acts), at every
fidelity, on two small distorted probe structures and on rotated, translated and permuted copies
of them, and compares

    E(R x + t, π) = E(x)            F(R x + t, π) = π(F(x)) Rᵀ

within ``tolerance`` (relative to the energy scale, float64). When the check fails,
:func:`offending_places` switches the fidelity terms off one place at a time and names the places
whose removal restores the symmetry.
"""

from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
from ase import Atoms
from torch import nn
from torch_geometric.data import Batch

from mfwrap.data import keys as K
from mfwrap.data.graph import GraphSpec, to_graph
from mfwrap.physics import energy_and_derivatives


def probe_structures(spec: GraphSpec, seed: int = 0) -> list[Atoms]:
    """A distorted triangle and tetrahedron (bonds ≈ half the shortest cutoff) in boxes larger than the cutoff."""
    rng = np.random.default_rng(seed)
    d = 0.5 * min(spec.cutoff, spec.line_graph_cutoff or spec.cutoff)
    triangle = np.array([[0, 0, 0], [d, 0, 0], [d / 2, d * np.sqrt(3) / 2, 0]])
    tetrahedron = np.vstack([triangle, [d / 2, d * np.sqrt(3) / 6, d * np.sqrt(2.0 / 3.0)]])
    box = np.eye(3) * (3 * spec.cutoff + 2 * d)
    return [Atoms(numbers, positions=positions + rng.normal(0, 0.08 * d, positions.shape) + 1.0, cell=box, pbc=True)
            for numbers, positions in (([8, 3, 26], triangle), ([15, 8, 8, 3], tetrahedron))]


def _moved(atoms: Atoms, rng: np.random.Generator) -> tuple[list[Atoms], np.ndarray, np.ndarray]:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    rotation = q * np.sign(np.diag(r))
    rotation = rotation if np.linalg.det(rotation) > 0 else -rotation
    rotated = atoms.copy()
    rotated.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
    rotated.positions = atoms.positions @ rotation.T
    translated = atoms.copy()
    translated.positions += rng.normal(size=3)
    order = rng.permutation(len(atoms))
    return [rotated, translated, atoms[order]], rotation, order


def rotating_places(backbone: nn.Module, paths: Sequence[str], tolerance: float = 1e-3) -> list[str]:
    """The places among ``paths`` whose outputs change when the probe structures are rotated
    (vector or tensor features; relative change > ``tolerance``). Invariant (scalar) places do not."""
    parameter = next(backbone.parameters())
    structures = probe_structures(backbone.graph_spec, seed=1)
    rotation = _moved(structures[0], np.random.default_rng(2))[1]
    turned = []
    for atoms in structures:
        copy_ = atoms.copy()
        copy_.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
        copy_.positions = atoms.positions @ rotation.T
        turned.append(copy_)
    modules = dict(backbone.named_modules())
    outputs: dict[str, list[list[torch.Tensor]]] = {p: [[], []] for p in paths}

    def recorder(path: str, which: int):
        return lambda module, args, out: outputs[path][which].append(out.detach().clone()) if torch.is_tensor(out) else None

    was_training = backbone.training
    backbone.eval()
    try:
        for which, group in enumerate((structures, turned)):
            handles = [modules[p].register_forward_hook(recorder(p, which)) for p in paths]
            try:
                graphs = [to_graph(s, backbone.graph_spec, dtype=parameter.dtype, name="probe") for s in group]
                with torch.no_grad():
                    backbone(Batch.from_data_list(graphs).to(parameter.device))
            finally:
                for handle in handles:
                    handle.remove()
    finally:
        backbone.train(was_training)
    found = []
    for path, (before, after) in outputs.items():
        for a, b in zip(before, after):
            if a.shape == b.shape and (a - b).abs().max() > tolerance * max(float(a.abs().max()), 1e-12):
                found.append(path)
                break
    return found


def randomise_fidelity_parameters(model: nn.Module, scale: float = 0.5, seed: int = 0) -> None:
    """Add noise to every parameter the surgery added (readouts: copies 1.. only), in place."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.fidelity_modules():
            copies = getattr(module, "copies", None)
            params = [p for c in copies[1:] for p in c.parameters()] if copies is not None else list(
                module.parameters(recurse=False))
            for p in params:
                p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))


def symmetry_violations(model: nn.Module, structures: Sequence[Atoms], tolerance: float = 1e-6, seed: int = 0) -> list[str]:
    """Descriptions of the symmetries ``model`` (a float64 multi-fidelity model) breaks; [] if none."""
    rng = np.random.default_rng(seed)
    failures = []
    dtype = next(model.parameters()).dtype
    for fidelity in range(len(model.fidelity_names)):
        for atoms in structures:
            moved, rotation, order = _moved(atoms, rng)
            graphs = [to_graph(s, model.graph_spec, fidelity=fidelity, dtype=dtype, name="probe", on_isolated_atoms="ignore")
                      for s in [atoms, *moved]]
            out = energy_and_derivatives(model, Batch.from_data_list(graphs), stress=False)
            energy = out[K.ENERGY].detach().numpy()
            forces = out[K.FORCES].detach().numpy().reshape(4, len(atoms), 3)
            scale = max(1.0, float(np.abs(energy[0])))
            expected_forces = [forces[0] @ rotation.T, forces[0], forces[0][order]]
            for name, e, f, f_expected in zip(("rotation", "translation", "permutation"), energy[1:], forces[1:],
                                              expected_forces):
                if abs(e - energy[0]) > tolerance * scale or np.abs(f - f_expected).max() > tolerance * scale:
                    failures.append(f"{name} at fidelity {model.fidelity_names[fidelity]!r}: energy changes by "
                                    f"{abs(e - energy[0]):.2e} eV, forces by {np.abs(f - f_expected).max():.2e} eV/Å")
    return failures


def _switch_off(module: nn.Module) -> None:
    """Make one inserted module fidelity-independent (its fidelity terms zero, its copies equal)."""
    with torch.no_grad():
        copies = getattr(module, "copies", None)
        if copies is not None:
            for other in copies[1:]:
                other.load_state_dict(copies[0].state_dict())
        for name in ("fidelity_weight", "fidelity_vectors"):
            if hasattr(module, name):
                getattr(module, name).zero_()


def offending_places(model: nn.Module, structures: Sequence[Atoms], tolerance: float = 1e-6) -> list[str]:
    """Places (module paths) whose fidelity terms alone break the symmetry: with that place
    switched off, the check passes."""
    found = []
    for index, module in enumerate(model.fidelity_modules()):
        trial = copy.deepcopy(model)
        _switch_off(trial.fidelity_modules()[index])
        if not symmetry_violations(trial, structures, tolerance):
            found.append(module.name)
    return found


def check_wrapped_model(model: nn.Module, tolerance: float = 1e-6) -> str:
    """Run the check on a float64 copy of ``model`` with randomised fidelity parameters.

    Returns a one-line summary for the surgery report; raises ValueError naming the offending
    places if a symmetry is broken.
    """
    trial = copy.deepcopy(model).double()
    randomise_fidelity_parameters(trial)
    structures = probe_structures(model.graph_spec)
    failures = symmetry_violations(trial, structures, tolerance)
    if failures:
        places = offending_places(trial, structures, tolerance)
        raise ValueError(
            f"the fidelity terms break the symmetry of {type(model.backbone).__name__}: {failures[0]}"
            + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else "")
            + (f"; the places responsible: {places}" if places else "; no single place is responsible")
            + " — fidelity terms must act on invariant (scalar) features only; choose other places in the spec "
            "(or pass check_symmetry=False to MultiFidelity to skip this check)"
        )
    return (f"symmetry checked: energy invariant and forces equivariant under rotation, translation and permutation "
            f"at all {len(model.fidelity_names)} fidelities, fidelity parameters randomised (float64, tolerance {tolerance:g})")
