"""mfwrap models in TorchSim (mfwrap.torchsim): the batched outputs are the ASE calculator's, the fidelity of
each system is respected and never silent, and a batched FIRE relaxation with a cell filter ends where
relaxing each structure with the ASE calculator does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch_sim as ts
from ase.build import bulk
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE

import mfwrap
from backbones.chgnet import CHGNet
from mf_models import perturb
from mfwrap.torchsim import TorchSimModel, relax


@pytest.fixture(scope="module")
def chgnet():
    return CHGNet.from_pretrained("0.3.0")


@pytest.fixture(scope="module")
def structures():
    """A mixed set: three elements and structure types, 2, 4 and 8 atoms, rattled and strained."""
    made = []
    kinds = (
        ("Si", {"a": 5.5, "cubic": True}),
        ("Cu", {"a": 3.7, "cubic": True}),
        ("LiF", {"crystalstructure": "rocksalt", "a": 4.1}),
    )
    for seed, (symbol, kwargs) in enumerate(kinds):
        atoms = bulk(symbol, **kwargs)
        atoms.set_cell(atoms.cell.array * (1 + 0.02 * (seed - 1)), scale_atoms=True)
        atoms.rattle(0.05, seed=seed)
        made.append(atoms)
    return made


def _state(structures):
    return ts.io.atoms_to_state(list(structures), device=torch.device("cpu"), dtype=torch.float64)


def test_batched_outputs_are_the_ase_calculators(chgnet, structures):
    out = TorchSimModel(chgnet)(_state(structures))
    assert out["energy"].shape == (3,) and out["stress"].shape == (3, 3, 3)
    forces = torch.split(out["forces"], [len(s) for s in structures])
    for atoms, energy, force, stress in zip(structures, out["energy"], forces, out["stress"]):
        reference = atoms.copy()
        reference.calc = mfwrap.Calculator(chgnet, verbose=False)
        assert float(energy) == pytest.approx(reference.get_potential_energy(), abs=1e-5)
        np.testing.assert_allclose(force.numpy(), reference.get_forces(), atol=1e-5)
        # eV/Å³, ASE sign; float32 sums in another order
        np.testing.assert_allclose(stress.numpy(), reference.get_stress(voigt=False), atol=1e-6)


def test_the_fidelity_of_each_system_is_respected_and_never_silent(chgnet, structures, capsys):
    mf = mfwrap.MultiFidelity(chgnet, ["pbe", "r2scan"], "ECMR", origin="pbe")
    perturb(mf, "ECMR", scale=0.05)  # the fidelities now differ
    with pytest.raises(ValueError, match="pbe.*r2scan"):
        TorchSimModel(mf)  # no fidelity: an error listing them
    chosen = ["r2scan", "pbe", "r2scan"]
    out = TorchSimModel(mf, fidelities=chosen)(_state(structures))
    assert "fidelity r2scan, pbe (of pbe, r2scan)" in capsys.readouterr().err
    for atoms, energy, fidelity in zip(structures, out["energy"], chosen):
        (expected,) = mfwrap.predict(mf, [atoms], fidelity=fidelity, stress=False)
        assert float(energy) == pytest.approx(expected["energy"], abs=1e-5)
    other = mfwrap.predict(mf, [structures[0]], fidelity="pbe", stress=False)[0]["energy"]
    assert abs(float(out["energy"][0]) - other) > 1e-3  # system 0 really ran at r2scan
    with pytest.raises(ValueError, match="give one fidelity per system"):
        TorchSimModel(mf, fidelities=["pbe"], verbose=False)(_state(structures))


def test_batched_relaxation_ends_where_one_by_one_relaxation_does(chgnet, structures):
    model = TorchSimModel(chgnet, verbose=False)
    relaxed, info = relax(model, structures, fmax=0.05, max_steps=400)
    assert len(relaxed) == 3
    for atoms, energy, final in zip(structures, info["energy"], relaxed):
        reference = atoms.copy()
        reference.calc = mfwrap.Calculator(chgnet, verbose=False)
        FIRE(FrechetCellFilter(reference), logfile=None).run(fmax=0.05, steps=400)
        assert energy / len(atoms) == pytest.approx(reference.get_potential_energy() / len(atoms), abs=1e-3)  # eV/atom
        final.calc = mfwrap.Calculator(chgnet, verbose=False)
        assert np.abs(final.get_forces()).max() < 0.1
