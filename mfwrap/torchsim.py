"""Any mfwrap model as a `TorchSim <https://github.com/TorchSim/torch-sim>`_ model: batched relaxation and MD.

``TorchSimModel(model, fidelity="r2scan")`` is a ``torch_sim.models.interface.ModelInterface``: given a
``SimState`` of several systems it returns "energy" (n_systems,) eV, "forces" (n_atoms, 3) eV/Å and
"stress" (n_systems, 3, 3) eV/Å³ (ASE's sign: mfwrap's GPa stress / 160.21766), so TorchSim's
optimisers (FIRE with a unit-cell or Fréchet cell filter), integrators and auto-batchers run native
CHGNet, a wrapped multi-fidelity model at a chosen fidelity, or an exported plain model.

The fidelity is explicit: a model with several fidelities needs ``fidelity`` (an error lists them), a
per-system choice is given as ``fidelities=[...]`` (one name per system of every state it will see), and
the model's fidelity is stated once on stderr unless ``verbose=False``. Graphs are built per system from
the state's positions and cell with mfwrap's own graph builder (:func:`mfwrap.data.graph.to_graph`: the
backbone's cutoffs, periodic images), batched, and evaluated in one forward pass; forces and stress are
the model's own derivatives (:func:`mfwrap.physics.energy_and_derivatives`).

Needs ``torch-sim-atomistic`` (0.3.0 is the last release for Python 3.11); mfwrap never imports it
otherwise.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch_geometric.data import Batch

try:
    from torch_sim.models.interface import ModelInterface
except ImportError as error:  # pragma: no cover - exercised only without the optional package
    raise ImportError(
        "mfwrap.torchsim needs TorchSim: pip install torch-sim-atomistic (0.3.0 on Python 3.11)"
    ) from error

from mfwrap.data import keys as K
from mfwrap.data.graph import to_graph
from mfwrap.fidelity import fidelity_names_of, is_multi_fidelity, resolve_fidelity
from mfwrap.physics import energy_and_derivatives

EV_PER_A3_TO_GPA = 160.21766208


class TorchSimModel(ModelInterface):
    """A TorchSim model of an mfwrap ``model`` at ``fidelity`` (module docstring).

    Args:
        model: a backbone, a :class:`mfwrap.MultiFidelity` or any model with ``graph_spec``.
        fidelity: the fidelity of every system; required for a multi-fidelity model unless ``fidelities``.
        fidelities: one fidelity name per system (the order of ``system_idx``), instead of ``fidelity``.
        device: where the model runs (default: where its parameters are).
        compute_stress: return stress (every system periodic in all three directions).
        verbose: state the fidelity on stderr once.
    """

    def __init__(
        self,
        model: nn.Module,
        fidelity: str | None = None,
        *,
        fidelities: Sequence[str] | None = None,
        device: str | torch.device | None = None,
        compute_stress: bool = True,
        verbose: bool = True,
    ) -> None:
        super().__init__()
        if fidelity is not None and fidelities is not None:
            raise ValueError("give fidelity (every system) or fidelities (one per system), not both")
        self.model = model
        parameter = next(model.parameters(), None)
        self._device = (
            torch.device(device)
            if device is not None
            else (parameter.device if parameter is not None else torch.device("cpu"))
        )
        self._dtype = parameter.dtype if parameter is not None else torch.get_default_dtype()
        self._compute_stress = compute_stress
        self._compute_forces = True
        self._memory_scales_with = "n_atoms_x_density"
        if fidelities is not None:
            self.fidelity_indices = torch.tensor([resolve_fidelity(model, f) for f in fidelities], dtype=torch.long)
        else:
            self.fidelity_indices = None
            self.fidelity_index = resolve_fidelity(model, fidelity)
        if verbose and is_multi_fidelity(model):
            chosen = fidelity if fidelities is None else ", ".join(dict.fromkeys(fidelities))
            print(
                f"mfwrap TorchSim model: fidelity {chosen} (of {', '.join(fidelity_names_of(model))})",
                file=sys.stderr,
            )
        self.model.to(self._device)

    def _fidelity_of(self, system: int) -> int:
        if self.fidelity_indices is None:
            return self.fidelity_index
        if system >= len(self.fidelity_indices):
            raise ValueError(
                f"the state has system {system} but fidelities names {len(self.fidelity_indices)} systems; "
                "give one fidelity per system"
            )
        return int(self.fidelity_indices[system])

    def forward(self, state: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Energy, forces and stress of every system of ``state`` (a ``SimState`` or its dict)."""
        import torch_sim as ts

        if isinstance(state, dict):
            state = ts.SimState(**state, masses=torch.ones_like(state["positions"]))
        positions = state.positions.detach().to("cpu", torch.float64).numpy()
        cells = state.row_vector_cell.detach().to("cpu", torch.float64).numpy()
        numbers = state.atomic_numbers.detach().cpu().numpy()
        system = state.system_idx.detach().cpu().numpy()
        pbc = bool(state.pbc)
        from ase import Atoms

        graphs = []
        for b in range(state.n_systems):
            mask = system == b
            atoms = Atoms(numbers=numbers[mask], positions=positions[mask], cell=cells[b], pbc=pbc)
            spec, fidelity = self.model.graph_spec, self._fidelity_of(b)
            graphs.append(to_graph(atoms, spec, fidelity=fidelity, name=f"system {b}", dtype=self._dtype))
        batch = Batch.from_data_list(graphs).to(self._device)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():  # no parameter gradients; forces and stress still enter autograd
                out = energy_and_derivatives(self.model, batch, forces=True, stress=self._compute_stress and pbc)
        finally:
            self.model.train(was_training)
        dtype = state.positions.dtype
        results = {
            "energy": out[K.ENERGY].detach().to(dtype),
            "forces": out[K.FORCES].detach().to(dtype),
        }
        if self._compute_stress:
            if not pbc:
                raise ValueError("stress needs systems periodic in all three directions; use compute_stress=False")
            results["stress"] = (out[K.STRESS].detach() / EV_PER_A3_TO_GPA).to(dtype)
        return {key: value.to(state.positions.device) for key, value in results.items()}


def relax(
    model: TorchSimModel,
    structures: Sequence[Any],
    *,
    fmax: float = 0.05,
    max_steps: int = 500,
    cell_filter: str | None = "frechet",
) -> tuple[list[Any], dict[str, np.ndarray]]:
    """Relax ``structures`` (ase.Atoms) together with TorchSim's FIRE (``cell_filter``: "frechet",
    "unit_cell" or None for fixed cells) until every system's largest force is below ``fmax`` eV/Å (and,
    with a cell filter, its stress below ``fmax`` eV/Å³ × volume scaling as TorchSim judges it) or
    ``max_steps``; returns the relaxed structures and {"energy": eV per system, "steps": steps taken}."""
    import torch_sim as ts

    optimizer = {"frechet": ts.frechet_cell_fire, "unit_cell": ts.unit_cell_fire, None: ts.optimizers.fire}
    if cell_filter not in optimizer:
        raise ValueError(f"cell_filter must be frechet, unit_cell or None, got {cell_filter!r}")
    state = ts.io.atoms_to_state(list(structures), device=model.device, dtype=torch.float64)
    converged = ts.generate_force_convergence_fn(force_tol=fmax, include_cell_forces=cell_filter is not None)
    final = ts.optimize(
        system=state,
        model=model,
        optimizer=optimizer[cell_filter],
        convergence_fn=converged,
        max_steps=max_steps,
    )
    energies = model(final)["energy"].detach().cpu().numpy()
    return ts.io.state_to_atoms(final), {"energy": energies}
