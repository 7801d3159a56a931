"""Does a wrapped model keep its backbone's symmetries? A check that runs after every surgery.

A fidelity term added to a layer that carries vector or tensor features (rows × components ×
channels) breaks rotational symmetry silently: the model trains, and its energy then depends on
the orientation of the structure. :func:`symmetry_violations` evaluates a float64 copy of the
wrapped model with every fidelity parameter randomised (so that each mechanism acts), at every
fidelity, on two small distorted probe structures and on rotated, translated and permuted copies
of them, and compares

    E(R x + t, π) = E(x)            F(R x + t, π) = π(F(x)) Rᵀ

within ``tolerance`` (relative to the energy scale, float64), and that the energy does not jump
as a neighbour crosses a cutoff (:func:`continuity_violations`). When a check fails,
:func:`offending_places` switches the fidelity terms off one place at a time and names the places
whose removal restores it.
"""

from __future__ import annotations

import copy
import re
import warnings
from typing import Sequence

import numpy as np
import torch
from ase import Atoms
from torch import nn
from torch_geometric.data import Batch

from mfwrap.data import keys as K
from mfwrap.data.graph import to_graph
from mfwrap.physics import energy_and_derivatives
from mfwrap.probe import batch_for, layer_outputs, probe_elements, probe_structures


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    rotation = q * np.sign(np.diag(r))
    return rotation if np.linalg.det(rotation) > 0 else -rotation


def _rotated(atoms: Atoms, rotation: np.ndarray) -> Atoms:
    rotated = atoms.copy()
    rotated.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
    rotated.positions = atoms.positions @ rotation.T
    return rotated


def _moved(atoms: Atoms, rng: np.random.Generator) -> tuple[list[Atoms], np.ndarray, np.ndarray]:
    rotation = _random_rotation(rng)
    rotated = _rotated(atoms, rotation)
    translated = atoms.copy()
    translated.positions += rng.normal(size=3)
    order = rng.permutation(len(atoms))
    return [rotated, translated, atoms[order]], rotation, order


def rotating_places(backbone: nn.Module, paths: Sequence[str], tolerance: float = 1e-3) -> list[str]:
    """The places among ``paths`` whose outputs change when the probe structures are rotated
    (vector or tensor features; relative change > ``tolerance``). Invariant (scalar) places do not."""
    structures = probe_structures(backbone.graph_spec, probe_elements(backbone), seed=1)
    rotation = _random_rotation(np.random.default_rng(2))
    _, before = layer_outputs(backbone, paths, batch_for(backbone, structures))
    _, after = layer_outputs(backbone, paths, batch_for(backbone, [_rotated(atoms, rotation) for atoms in structures]))
    found = []
    for path in paths:
        for a, b in zip(before[path], after[path]):
            if (
                a is not None
                and b is not None
                and a.shape == b.shape
                and ((a - b).abs().max() > tolerance * max(float(a.abs().max()), 1e-12))
            ):
                found.append(path)
                break
    return found


_IRREP = re.compile(r"^\s*(\d+)\s*x\s*(\d+)([eo])\s*$")


def _irreps_out(module: nn.Module) -> list[tuple[int, int, str]] | None:
    """(multiplicity, l, parity) of each term of ``module.irreps_out``; None if undeclared or unreadable."""
    irreps = getattr(module, "irreps_out", None)
    if irreps is None:
        return None
    terms = []
    for term in str(irreps).split("+"):
        match = _IRREP.match(term) or _IRREP.match(f"1x{term}")
        if match is None:
            return None
        terms.append((int(match[1]), int(match[2]), match[3]))
    return terms


def scalar_columns(module: nn.Module) -> torch.Tensor | None:
    """Output columns of ``module`` that are true scalars (e3nn ``0e``), from its ``irreps_out``.

    e3nn lays a feature vector out irrep by irrep, ``mul`` copies of ``2l + 1`` components each,
    in the order of ``irreps_out`` (e.g. ``"32x0e+8x1o"``: columns 0..31 are the 32 scalars,
    32..55 the 8 vectors). Pseudoscalars (``0o``) change sign under inversion, so they are not
    scalars here. Returns None when the module declares no irreps (or they cannot be read), and
    an empty tensor when it declares no ``0e`` part.
    """
    terms = _irreps_out(module)
    if terms is None:
        return None
    columns, start = [], 0
    for mul, degree, parity in terms:
        if degree == 0 and parity == "e":
            columns.append(torch.arange(start, start + mul))
        start += mul * (2 * degree + 1)
    return torch.cat(columns) if columns else torch.zeros(0, dtype=torch.long)


def declares_non_scalars(module: nn.Module) -> bool:
    """Whether ``module.irreps_out`` has parts other than ``0e`` (whatever a probe shows: a vector
    part that happens to be zero on the probe still rotates in general)."""
    return any(not (degree == 0 and parity == "e") for _, degree, parity in _irreps_out(module) or [])


def randomise_fidelity_parameters(model: nn.Module, scale: float = 0.5, seed: int = 0) -> None:
    """Add noise to every parameter the surgery added (readouts: their ``varying_parameters``), in place."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.fidelity_modules():
            varying = getattr(module, "varying_parameters", None)
            params = varying() if varying is not None else list(module.parameters(recurse=False))
            for p in params:
                p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))


def symmetry_violations(
    model: nn.Module, structures: Sequence[Atoms], tolerance: float = 1e-6, seed: int = 0
) -> list[str]:
    """Descriptions of the symmetries ``model`` (a float64 multi-fidelity model) breaks; [] if none."""
    rng = np.random.default_rng(seed)
    failures = []
    dtype = next(model.parameters()).dtype
    for fidelity in range(len(model.fidelity_names)):
        for atoms in structures:
            moved, rotation, order = _moved(atoms, rng)
            graphs = [
                to_graph(s, model.graph_spec, fidelity=fidelity, dtype=dtype, name="probe", on_isolated_atoms="ignore")
                for s in [atoms, *moved]
            ]
            out = energy_and_derivatives(model, Batch.from_data_list(graphs), stress=False)
            energy = out[K.ENERGY].detach().numpy()
            forces = out[K.FORCES].detach().numpy().reshape(4, len(atoms), 3)
            scale = max(1.0, float(np.abs(energy[0])))
            expected_forces = [forces[0] @ rotation.T, forces[0], forces[0][order]]
            for name, e, f, f_expected in zip(
                ("rotation", "translation", "permutation"), energy[1:], forces[1:], expected_forces
            ):
                if abs(e - energy[0]) > tolerance * scale or np.abs(f - f_expected).max() > tolerance * scale:
                    failures.append(
                        f"{name} at fidelity {model.fidelity_names[fidelity]!r}: energy changes by "
                        f"{abs(e - energy[0]):.2e} eV, forces by {np.abs(f - f_expected).max():.2e} eV/Å"
                    )
    return failures


def continuity_violations(model: nn.Module, tolerance: float = 1e-6) -> list[str]:
    """Energy jumps as a neighbour crosses each cutoff (atom graph, bond graph): a fidelity term on a
    radial filter that vanishes at the cutoff breaks smoothness as silently as symmetry. Three
    atoms A, B, C in a large box; C moves radially across the cutoff of A by 2δ (δ = 1e-7 Å); the
    energy may change only by the work of the force over that step."""
    spec = model.graph_spec
    elements = probe_elements(model)
    cutoffs = [c for c in (spec.cutoff, spec.line_graph_cutoff) if c is not None]
    dtype = next(model.parameters()).dtype
    box = np.eye(3) * (3 * max(cutoffs) + 6.0)
    a, b = np.array([1.0, 1.0, 1.0]), np.array([2.3, 1.4, 1.2])
    direction = np.array([0.31, -0.62, 0.72]) / np.linalg.norm([0.31, -0.62, 0.72])
    failures, delta = [], 1e-7
    for fidelity in range(len(model.fidelity_names)):
        for cutoff in cutoffs:
            cells = [
                Atoms(
                    [elements[2], elements[0], elements[1]],
                    positions=[a, b, a + direction * (cutoff + sign * delta)],
                    cell=box,
                    pbc=True,
                )
                for sign in (-1, 1)
            ]
            graphs = [
                to_graph(s, spec, fidelity=fidelity, dtype=dtype, name="probe", on_isolated_atoms="ignore")
                for s in cells
            ]
            out = energy_and_derivatives(model, Batch.from_data_list(graphs), stress=False)
            energy, forces = out[K.ENERGY].detach().numpy(), out[K.FORCES].detach().numpy()
            work = -float(forces[2] @ direction) * 2 * delta
            jump = abs(energy[1] - energy[0] - work)
            if jump > tolerance * max(1.0, abs(float(energy[0]))):
                failures.append(
                    f"energy jumps by {jump:.2e} eV as a neighbour crosses the {cutoff} Å cutoff at fidelity "
                    f"{model.fidelity_names[fidelity]!r}"
                )
    return failures


def _switch_off(module: nn.Module) -> None:
    """Make one inserted module fidelity-independent (its fidelity terms zero, its readouts equal)."""
    with torch.no_grad():
        equalise = getattr(module, "equalise", None)
        if equalise is not None:
            equalise()
        for name in ("fidelity_weight", "fidelity_vectors"):
            if hasattr(module, name):
                getattr(module, name).zero_()


def _all_violations(model: nn.Module, structures: Sequence[Atoms], tolerance: float) -> list[str]:
    return symmetry_violations(model, structures, tolerance) + continuity_violations(model, tolerance)


def offending_places(model: nn.Module, structures: Sequence[Atoms], tolerance: float = 1e-6) -> list[str]:
    """A minimal set of places (module paths) whose fidelity terms together break a symmetry or
    smoothness: starting from all, each place is switched off for good if the checks still fail
    without it (one place may suffice; DimeNet++'s radial and spherical filters, say, only in pairs)."""
    trial = copy.deepcopy(model)
    inserted = trial.fidelity_modules()
    kept = []
    for index, module in enumerate(inserted):
        attempt = copy.deepcopy(trial)
        _switch_off(attempt.fidelity_modules()[index])
        if _all_violations(attempt, structures, tolerance):
            _switch_off(module)  # not needed for the failure
        else:
            kept.append(module.name)
    return kept


def _without_fidelity_terms(model: nn.Module) -> nn.Module:
    trial = copy.deepcopy(model)
    for inserted in trial.fidelity_modules():
        _switch_off(inserted)
    return trial


def check_wrapped_model(model: nn.Module, tolerance: float = 1e-6) -> str:
    """Run the check on a float64 copy of ``model`` with randomised fidelity parameters.

    Returns a one-line summary for the surgery report; raises ValueError naming the offending
    places if a symmetry is broken.
    """
    trial = copy.deepcopy(model).double()
    randomise_fidelity_parameters(trial)
    structures = probe_structures(model.graph_spec, probe_elements(model))
    failures = _all_violations(trial, structures, tolerance)
    own = _all_violations(_without_fidelity_terms(trial), structures, tolerance) if failures else []
    if own:
        message = (
            f"symmetry not established: {type(model.backbone).__name__} itself fails the checks without fidelity "
            f"terms ({own[0]}); nothing is attributed to the wrapper"
        )
        warnings.warn(message, stacklevel=3)
        return message
    if failures:
        places = offending_places(trial, structures, tolerance)
        raise ValueError(
            f"the fidelity terms break the symmetry or smoothness of {type(model.backbone).__name__}: {failures[0]}"
            + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else "")
            + (f"; the places responsible (together): {places}" if places else "")
            + " — fidelity terms must act on invariant (scalar) features, and not on filters that vanish at the "
            "cutoff; choose other places in the spec "
            "(or pass check_symmetry=False to MultiFidelity to skip this check)"
        )
    return (
        f"symmetry checked: energy invariant and forces equivariant under rotation, translation and permutation, "
        f"energy continuous at every cutoff, at all {len(model.fidelity_names)} fidelities, fidelity parameters "
        f"randomised (float64, tolerance {tolerance:g})"
    )
