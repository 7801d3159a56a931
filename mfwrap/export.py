"""Export one fidelity of a :class:`~mfwrap.MultiFidelity` model as the plain backbone.

The wrapped model at fidelity f is the backbone with the surgery's modules in place of its own; each
of them, at a fixed f, is a plain module with the fidelity's parameters folded in (each mechanism's
``folded``: E adds X_f to the element table or bias, M adds the one-hot column W_F[:, f] to the
bias, R takes copy f or shared + residual_f, C writes row f into the backbone's own composition
module). :func:`export_fidelity` puts those in the places the surgery report names, and loads the
result into a new instance of the backbone's class built from its ``config``, so the result is the
backbone's own architecture (``describe_model`` / ``save_model`` work as for any backbone)
and runs without a fidelity anywhere; its outputs (energy, forces, stress, magmoms) equal the
wrapped model's at f, which the export checks on the probe structures.

Mechanism C *added* to a backbone without a composition module goes where the backbone says, its
``add_element_energies(energies)`` (index Z, eV/atom; e.g. SevenNet's per-species energy shift).

Cannot be exported, each a ValueError: a model that is not a ``MultiFidelity`` (a Δ model is two
networks), a place whose module has no ``folded`` or cannot hold the fidelity's parameters (E or M
on a layer without a bias), and mechanism C added to a backbone without ``add_element_energies``:
the fidelity's per-element energies then have no home in the plain backbone, so the plain model
cannot give the fidelity's energies.
"""

from __future__ import annotations

import copy
from typing import Mapping

import torch
from torch import nn
from torch_geometric.data import Batch

from mfwrap.data import keys as K
from mfwrap.data.graph import to_graph
from mfwrap.fidelity import FidelityContext, resolve_fidelity
from mfwrap.multifidelity import MultiFidelity
from mfwrap.probe import probe_elements, probe_structures

# |E_exported − E_wrapped| allowed on the probe structures, relative to max(1 eV, |E|): float32 rounding
# of a term added to the table instead of after the lookup, far below any fold that is wrong.
_TOLERANCE = 1e-4


def export_fidelity(model: MultiFidelity, fidelity: str) -> nn.Module:
    """The plain backbone of ``model`` with fidelity ``fidelity`` (a name) folded in (module docstring).

    Returns a new model in evaluation mode, on the device of ``model``, carrying its
    ``trained_elements`` record; ``model`` is not changed. Raises ValueError for an unknown fidelity
    name (listing the names) and for models that cannot be exported (module docstring).
    """
    if not isinstance(model, MultiFidelity):
        kind = "a Δ model (a base and a correction, two networks)" if hasattr(model, "delta") else type(model).__name__
        raise ValueError(
            f"cannot export {kind}: only an mfwrap.MultiFidelity model has fidelities to fold into its plain backbone"
        )
    index = resolve_fidelity(model, fidelity)
    if model.composition is not None and not callable(getattr(model.backbone, "add_element_energies", None)):
        raise ValueError(
            f"{type(model.backbone).__name__} has no composition module, so mechanism C added per-element "
            f"energies of its own, and the plain backbone cannot carry those: fidelity {fidelity!r} of this model "
            "cannot be exported as a plain model (wrap a backbone with a composition module, or train without C)"
        )
    parameter = next(model.parameters())
    fresh = _rebuilt(model.backbone)  # the backbone's own class and modules, in the wrapped model's dtype and device
    if fresh is not None:
        fresh.to(device=parameter.device, dtype=parameter.dtype)
    folded = copy.deepcopy(model.backbone)
    for letter, path, type_name, _ in model.surgery.places:
        module = folded.get_submodule(path)
        fold = getattr(module, "folded", None)
        if fold is None:
            raise ValueError(
                f"cannot export: {path} (mechanism {letter}'s place, a {type_name} before the surgery) holds a "
                f"module of type {type(module).__name__}, which has no `folded` to make it a plain module"
            )
        if letter == "C":
            if fresh is None:
                raise ValueError(
                    f"cannot export: {type(model.backbone).__name__} has no config, so its own composition "
                    f"module at {path} cannot be rebuilt to hold the fidelity's element energies"
                )
            folded.set_submodule(path, fold(index, fresh.get_submodule(path)))
        else:
            folded.set_submodule(path, fold(index))
    if model.composition is not None:  # C added to the total energy: the backbone's own per-atom energies take it
        folded.add_element_energies(model.composition.element_energies[index].detach())
    left = [name for name, m in folded.named_modules() if isinstance(getattr(m, "context", None), FidelityContext)]
    if left:
        raise ValueError(f"cannot export: fidelity modules outside the surgery's places remain at {left[:5]}")
    exported = folded
    if fresh is not None:
        fresh.load_state_dict(folded.state_dict())
        exported = fresh
    record = getattr(model, "trained_elements", None)
    if record is not None:
        exported.trained_elements = record
    _check_equal(model, exported, index)
    return exported.eval()


def _rebuilt(module: nn.Module) -> nn.Module | None:
    """A new instance of ``module``'s class from its ``config`` (constructor arguments; modules in it rebuilt
    the same way, or copied), as :func:`mfwrap.model_file.build_model` builds a file's; None without one."""
    config = getattr(module, "config", None)
    if not isinstance(config, Mapping):
        return None
    arguments = dict(config)
    for key, value in config.items():
        if isinstance(value, nn.Module):
            rebuilt = _rebuilt(value)
            arguments[key] = copy.deepcopy(value) if rebuilt is None else rebuilt
    return type(module)(**arguments)


def _check_equal(model: MultiFidelity, exported: nn.Module, index: int) -> None:
    """RuntimeError unless ``exported`` gives the energies (and magmoms) of ``model`` at fidelity
    ``index`` on the probe structures."""
    parameter = next(model.parameters())
    structures = probe_structures(model.graph_spec, probe_elements(model))
    graphs = [to_graph(s, model.graph_spec, fidelity=index, dtype=parameter.dtype, name="probe") for s in structures]
    batch = Batch.from_data_list(graphs).to(parameter.device)
    modes = model.training, exported.training
    model.eval(), exported.eval()
    try:
        with torch.no_grad():
            wrapped, plain = model(batch), exported(batch)
    finally:
        model.train(modes[0]), exported.train(modes[1])
    for key in (K.ENERGY, K.MAGMOMS):
        if key in wrapped:
            scale = max(1.0, float(wrapped[key].abs().max()))
            error = float((plain[key].double() - wrapped[key].double()).abs().max())
            if error > _TOLERANCE * scale:
                raise RuntimeError(
                    f"the exported model's {key} differs from the wrapped model's at fidelity {index} by {error:.3g} "
                    f"on the probe structures: a module was folded wrongly"
                )
