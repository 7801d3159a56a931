"""matgl adapters: equal to matgl's own models on matgl's own graphs; wrapped, saved, trained.

Identity (float64, so that equality is exact up to summation order): energies, forces and stress of
each adapter equal those of matgl's ``Potential`` around the same network on matgl's converter
graph, within 1e-10 relative (measured with weights moved far from matgl's initialisation:
|ΔE| ≤ 9e-14 eV of |E| up to 289 eV, |ΔF| ≤ 2e-13 eV/Å of |F| up to 35 eV/Å, |Δσ| ≤ 7e-13 GPa).
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import molecule
from torch_geometric.data import Batch

import mfwrap
from mfwrap.data import keys as K
from mfwrap.data.graph import to_graph
from mfwrap.datasets.structures import lifepo4
from mfwrap.physics import energy_and_derivatives
from mfwrap.surgery import propose_spec
from mfwrap.symmetry import randomise_fidelity_parameters
from mfwrap.train import TrainConfig, Trainer

matgl_models = pytest.importorskip("matgl.models")
from matgl.apps.pes import Potential  # noqa: E402

from backbones.matgl import MatglCHGNet, MatglM3GNet, MatglTensorNet, from_matgl  # noqa: E402

sys.path.insert(0, str(Path(__file__).parents[1] / "train"))
from tiny_backbone import labelled_graphs  # noqa: E402

SMALL = {  # tiny sizes and short cutoffs: a few thousand parameters, tens of edges per atom
    MatglM3GNet: {
        "dim_node_embedding": 16,
        "dim_edge_embedding": 16,
        "units": 16,
        "nblocks": 2,
        "cutoff": 4.0,
        "threebody_cutoff": 3.0,
    },
    MatglTensorNet: {"units": 16, "nblocks": 2, "num_rbf": 8, "cutoff": 4.0},
    MatglCHGNet: {
        "dim_atom_embedding": 16,
        "dim_bond_embedding": 16,
        "dim_angle_embedding": 16,
        "num_blocks": 3,
        "atom_conv_hidden_dims": [16],
        "bond_update_hidden_dims": [16],
        "bond_conv_hidden_dims": [16],
        "final_hidden_dims": [16],
        "max_n": 5,
        "max_f": 3,
        "cutoff": 4.5,
        "threebody_cutoff": 3.0,
    },
}
ADAPTERS = list(SMALL)
IDS = ["m3gnet", "tensornet", "chgnet"]


def _adapter(cls, seed: int = 0):
    torch.manual_seed(seed)
    model = cls(**SMALL[cls])
    with torch.no_grad():  # non-zero element references, so that C and the composition path are exercised
        model.element_refs.element_energies.copy_(torch.linspace(-3.0, -1.0, 94))
    return model


def _structures():
    crystal = lifepo4().to_ase_atoms()
    crystal.rattle(0.1, seed=1)  # off the symmetric positions: non-zero forces
    ethanol = molecule("CH3CH2OH")
    ethanol.rattle(0.05, seed=2)
    return {"crystal": crystal, "molecule": ethanol}


def _matgl_graph(network, atoms):
    """matgl's own graph of ``atoms`` (its pymatgen converters), float64 coordinates and lattice."""
    from matgl.ext.pymatgen import Molecule2Graph, Structure2Graph
    from pymatgen.core import Molecule, Structure

    if atoms.pbc.any():
        structure = Structure(
            atoms.cell.array, atoms.get_chemical_symbols(), atoms.positions, coords_are_cartesian=True
        )
        graph, _, _ = Structure2Graph(network.element_types, network.cutoff).get_graph(structure)
        graph.frac_coords = torch.tensor(atoms.get_scaled_positions(wrap=False))
        return graph, torch.tensor(atoms.cell.array).unsqueeze(0)
    graph, _, _ = Molecule2Graph(network.element_types, network.cutoff).get_graph(
        Molecule(atoms.get_chemical_symbols(), atoms.positions)
    )
    graph.frac_coords = torch.tensor(atoms.positions)  # molecules: Cartesian, identity lattice
    return graph, torch.eye(3, dtype=torch.float64).unsqueeze(0)


@pytest.mark.parametrize("cls", ADAPTERS, ids=IDS)
def test_equals_matgl_potential_on_matgl_graph(cls):
    """A network built by matgl, in a Potential with mean, std and element refs, adapted by from_matgl."""
    torch.manual_seed(1)
    network = getattr(matgl_models, cls.matgl_class)(**{**cls.defaults, **SMALL[cls]})
    with torch.no_grad():  # far from matgl's initialisation, where forces are nearly zero
        for parameter in network.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    potential = Potential(network, data_mean=0.3, data_std=2.0, element_refs=torch.randn(len(network.element_types)))
    potential = potential.double()
    adapter = from_matgl(potential)
    assert type(adapter) is cls and adapter.model is network  # the same modules, not copies
    for name, atoms in _structures().items():
        energy, forces, stress, _ = potential(*_matgl_graph(network, atoms))
        ours = energy_and_derivatives(
            adapter, Batch.from_data_list([to_graph(atoms, adapter.graph_spec, dtype=torch.float64)])
        )
        torch.testing.assert_close(
            ours[K.ENERGY].detach(), energy.detach().reshape(1), rtol=1e-10, atol=1e-10, msg=name
        )
        scale = float(forces.detach().abs().max())
        torch.testing.assert_close(ours[K.FORCES], forces, rtol=1e-10, atol=1e-10 * scale, msg=name)
        assert scale > 1e-2
        if name == "crystal":
            torch.testing.assert_close(ours[K.STRESS][0], stress.reshape(3, 3), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cls", ADAPTERS, ids=IDS)
def test_wrapped_equals_bare_at_initialisation_and_keeps_symmetry(cls, tmp_path):
    backbone = _adapter(cls)
    mf = mfwrap.MultiFidelity(backbone, ["low", "high"], "ECMR")  # runs the symmetry check; a failure raises
    assert mf.surgery.symmetry.startswith("symmetry checked")
    assert {letter: mf.surgery.count(letter) for letter in "ECMR"} == {
        MatglM3GNet: {"E": 1, "C": 1, "M": 14, "R": 1},
        MatglTensorNet: {"E": 1, "C": 1, "M": 4, "R": 1},
        MatglCHGNet: {"E": 1, "C": 1, "M": 20, "R": 1},
    }[cls]
    structures = list(_structures().values())
    bare = mfwrap.predict(backbone, structures)
    for fidelity in ("low", "high"):
        for ours, expected in zip(mfwrap.predict(mf, structures, fidelity=fidelity), bare):
            assert ours["energy"] == pytest.approx(expected["energy"], rel=1e-6)
            np.testing.assert_allclose(ours["forces"], expected["forces"], rtol=1e-5, atol=1e-6)

    randomise_fidelity_parameters(mf, scale=0.1)  # fidelities now differ; the file must keep that
    mf.save(tmp_path / "mf.pt")
    loaded = mfwrap.load(tmp_path / "mf.pt")
    assert type(loaded.backbone) is cls and loaded.backbone.config == backbone.config
    before = mfwrap.predict(mf, structures, fidelity="high")
    after = mfwrap.predict(loaded, structures, fidelity="high")
    assert before[0]["energy"] != pytest.approx(mfwrap.predict(mf, structures, fidelity="low")[0]["energy"], rel=1e-6)
    for a, b in zip(after, before):
        assert a["energy"] == pytest.approx(b["energy"], rel=1e-6)
        np.testing.assert_allclose(a["forces"], b["forces"], rtol=1e-5, atol=1e-6)
        if "magmoms" in b:
            np.testing.assert_allclose(a["magmoms"], b["magmoms"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", ADAPTERS, ids=IDS)
def test_multi_fidelity_training_reduces_the_error(cls, tmp_path):
    """A few optimiser steps (4 epochs of 4 batches) after the composition fit, which both sides share."""
    spec = _adapter(cls).graph_spec
    train = labelled_graphs(8, 0, 0, spec, magmoms=False) + labelled_graphs(8, 1, 1, spec, magmoms=False)
    test = labelled_graphs(4, 2, 0, spec, magmoms=False) + labelled_graphs(4, 3, 1, spec, magmoms=False)
    config = TrainConfig(
        epochs=4, batch_size=4, lr=0.005, targets="ef", output_dir=str(tmp_path), progress=False, seed=0
    )
    untrained = Trainer(mfwrap.MultiFidelity(_adapter(cls), ["low", "high"], "ECMR"), config)
    untrained.model.fit_composition(untrained.split_validation(train)[0])  # as fit does, so only the steps differ
    before = untrained.evaluate(test)
    result = Trainer(mfwrap.MultiFidelity(_adapter(cls), ["low", "high"], "ECMR"), config).fit(train, test=test)
    for fidelity in ("low", "high"):  # the teacher's forces are small (≈ 6 meV/Å): the energy error is what drops
        assert result["test"][fidelity]["energy"]["mae"] < 0.5 * before[fidelity]["energy"]["mae"]
        assert result["test"][fidelity]["forces"]["mae"] < 2.0 * before[fidelity]["forces"]["mae"]


def test_unknown_element_and_unsupported_models_are_clear_errors():
    model = MatglTensorNet(element_types=("Li", "O"), units=8, nblocks=1, num_rbf=4, cutoff=3.0)
    atoms = _structures()["crystal"]
    with pytest.raises(
        ValueError, match=r"element Fe \(Z = 26\) is not among the model's element_types \(2 elements: Li, O\)"
    ):
        mfwrap.predict(model, atoms)
    with pytest.raises(ValueError, match="is_intensive=False"):
        MatglM3GNet(is_intensive=True, units=8, dim_node_embedding=8, dim_edge_embedding=8, nblocks=1)
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['hidden'\]"):
        MatglCHGNet(hidden=3)
    with pytest.raises(TypeError, match="expects a matgl M3GNet"):
        MatglM3GNet.from_matgl(model.model)
    with pytest.raises(TypeError, match="cannot adapt a Linear"):
        from_matgl(torch.nn.Linear(2, 2))


def test_importing_mfwrap_and_backbones_does_not_import_matgl():
    code = (
        "import sys, mfwrap, backbones, backbones.matgl, backbones.pyg; assert 'matgl' not in sys.modules, 'imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


@pytest.mark.parametrize("cls", ADAPTERS, ids=IDS)
def test_heuristic_spec_for_matgl_networks(cls):
    """What propose_spec makes of networks mfwrap did not write (the adapters' own specs hidden).

    With matgl's default 89 element types it finds the element embedding and the composition table,
    and the readout one level down (``model.final_layer``; CHGNet's site-wise magmom head is not
    taken for one). Its message places (every linear of the interaction stacks) include M3GNet's
    radial filters, which the post-surgery check rejects, naming them, and TensorNet's tensor
    linears (rows × 3 × 3 × channels), which the surgery skips and reports. For CHGNet they pass.
    """
    backbone = cls(**{**SMALL[cls], **({"nblocks": 1} if cls is MatglM3GNet else {})})  # fewer places to search
    backbone.fidelity_spec = None
    proposal = propose_spec(backbone)
    assert proposal.embedding == cls.fidelity_spec["embedding"] and proposal.composition == "element_refs"
    assert proposal.readout == ("model.final_layer",)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "heuristics chose ..."
        if cls is MatglCHGNet:
            mf = mfwrap.MultiFidelity(backbone, ["low", "high"], "ECMR")
            assert mf.surgery.symmetry.startswith("symmetry checked") and mf.surgery.count("M") > 20
            assert [p for m, p, *_ in mf.surgery.places if m == "R"] == ["model.final_layer"]
        elif cls is MatglTensorNet:  # its tensor linears (rows x 3 x 3 x channels) are skipped, and said so
            mf = mfwrap.MultiFidelity(backbone, ["low", "high"], "ECMR")
            assert mf.surgery.refused and all("linears_tensor" in p for p in mf.surgery.refused)
            assert mf.surgery.symmetry.startswith("symmetry checked")
        else:
            with pytest.raises(ValueError, match="energy jumps.*node_weight_func"):
                mfwrap.MultiFidelity(backbone, ["low", "high"], "ECMR")


@pytest.mark.parametrize("cls", ADAPTERS, ids=IDS)
def test_a_model_of_other_elements_is_wrapped_with_probes_of_its_own_elements(cls):
    backbone = cls(**SMALL[cls], element_types=["Si", "O"])  # none of the default probe elements O Li Fe P but O
    assert sorted(backbone.supported_numbers) == [8, 14]
    mf = mfwrap.MultiFidelity(backbone, ["low", "high"], "ECMR")
    assert mf.surgery.symmetry.startswith("symmetry checked")
