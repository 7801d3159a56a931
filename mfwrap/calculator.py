"""``mfwrap.Calculator``: an ASE calculator for any mfwrap model at one fidelity."""

from __future__ import annotations

import sys

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator as AseCalculator
from ase.calculators.calculator import all_changes
from ase.stress import full_3x3_to_voigt_6_stress
from torch import nn
from torch_geometric.data import Batch

from mfwrap.data import keys as K
from mfwrap.data.graph import EV_PER_A3_TO_GPA, to_graph
from mfwrap.fidelity import fidelity_names_of, is_multi_fidelity, resolve_fidelity
from mfwrap.model_file import warn_unseen_elements
from mfwrap.physics import energy_and_derivatives


class Calculator(AseCalculator):
    """Energy (eV), forces (eV/Å), stress (eV/Å^3, ASE's Voigt order and sign) and magmoms (μB).

    ASE's stress is (1/V) ∂E/∂ε, the same sign as mfwrap's GPa stress, so it is that stress
    divided by 160.21766. Structures not periodic in all three directions have no stress
    (asking for it raises ASE's PropertyNotImplementedError). Elements the model's training data
    did not have are warned about once (:func:`mfwrap.model_file.warn_unseen_elements`).

    Args:
        model: a backbone or :class:`mfwrap.MultiFidelity`.
        fidelity: fidelity name; required when the model has more than one.
        device: where to evaluate; defaults to the model's device.
        verbose: say on stderr, once, at which fidelity a multi-fidelity model is used.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "magmoms"]

    def __init__(
        self,
        model: nn.Module,
        fidelity: str | None = None,
        device: str | torch.device | None = None,
        verbose: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.fidelity_index = resolve_fidelity(model, fidelity)
        self.fidelity = fidelity
        if verbose and is_multi_fidelity(model):
            names = list(fidelity_names_of(model))
            print(f"mfwrap.Calculator: {type(model).__name__} at fidelity {fidelity!r} of {names}", file=sys.stderr)
        parameter = next(model.parameters())
        self.device = torch.device(device) if device is not None else parameter.device
        self.dtype = parameter.dtype
        self.model = model.to(self.device)

    def calculate(self, atoms: Atoms | None = None, properties=None, system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        graph = to_graph(
            self.atoms, self.model.graph_spec, fidelity=self.fidelity_index, dtype=self.dtype, name="atoms"
        )
        warn_unseen_elements(self.model, graph[K.ATOMIC_NUMBERS])
        batch = Batch.from_data_list([graph]).to(self.device)
        periodic = bool(self.atoms.pbc.all())
        was_training = self.model.training
        self.model.eval()  # evaluation mode for this call only: the user's model keeps its mode
        try:
            with torch.no_grad():  # no parameter gradients (forces and stress still enter autograd)
                out = energy_and_derivatives(self.model, batch, forces=True, stress=periodic)
        finally:
            self.model.train(was_training)
        energy = float(out[K.ENERGY].detach()[0])
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": out[K.FORCES].detach().cpu().numpy().astype(np.float64),
        }
        if periodic:
            stress = out[K.STRESS].detach()[0].cpu().numpy().astype(np.float64) / EV_PER_A3_TO_GPA
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress)
        if K.MAGMOMS in out:
            self.results["magmoms"] = out[K.MAGMOMS].detach().cpu().numpy().astype(np.float64)
