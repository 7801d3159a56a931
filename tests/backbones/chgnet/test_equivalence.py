"""Native CHGNet with official weights equals official CHGNet's ``predict_structure`` (float32)."""

from __future__ import annotations

import numpy as np
import pytest
from torch_geometric.data import Batch

import mfwrap
from backbones.chgnet import CHGNet
from mfwrap.data.graph import to_graph

TOLERANCE = {"energy_per_atom": 1e-5, "forces": 1e-4, "stress": 1e-3, "magmoms": 1e-4}  # eV/atom, eV/Å, GPa, μB


@pytest.mark.parametrize("version", ["0.3.0", "0.2.0", "r2scan"])
def test_matches_official_predict_structure(version, test_structures):
    from chgnet.model import CHGNet as OfficialCHGNet

    structures = list(test_structures.values())
    official = OfficialCHGNet.load(model_name=version, verbose=False, use_device="cpu")
    reference = official.predict_structure(structures, task="efsm", batch_size=16)
    ours = mfwrap.predict(CHGNet.from_pretrained(version), structures, batch_size=16)

    for name, structure, ref, pred in zip(test_structures, structures, reference, ours, strict=True):
        n_atoms = len(structure)
        errors = {
            "energy_per_atom": abs(pred["energy"] / n_atoms - float(ref["e"])),
            "forces": np.abs(pred["forces"] - ref["f"]).max(),
            "stress": np.abs(pred["stress"] - ref["s"]).max(),
            "magmoms": np.abs(pred["magmoms"] - ref["m"]).max(),
        }
        assert np.abs(ref["f"]).max() > 0.1, f"{name}: rattling should give nonzero forces"
        for key, error in errors.items():
            assert error <= TOLERANCE[key], f"{version} {name}: {key} differs by {error:.3g} (> {TOLERANCE[key]})"


@pytest.mark.parametrize("version", ["0.3.0", "r2scan"])
def test_structure_without_angles_matches_official(version, angle_free_structure):
    """No angles: official skips its bond layers; ours run them on no angles, which changes
    nothing without an output bias (0.2.0 has one: there we add it to every bond, as official
    does for any batch that has at least one angle)."""
    from chgnet.model import CHGNet as OfficialCHGNet

    model = CHGNet.from_pretrained(version)
    batch = Batch.from_data_list([to_graph(angle_free_structure, model.graph_spec)])
    assert batch.angle_edges.shape[1] == 0 and batch.edge_index.shape[1] > 0
    official = OfficialCHGNet.load(model_name=version, verbose=False, use_device="cpu")
    ref = official.predict_structure(angle_free_structure, task="efsm")
    (pred,) = mfwrap.predict(model, [angle_free_structure])
    assert abs(pred["energy"] / len(angle_free_structure) - float(ref["e"])) <= TOLERANCE["energy_per_atom"]
    assert np.abs(pred["forces"] - ref["f"]).max() <= TOLERANCE["forces"]
    assert np.abs(pred["stress"] - ref["s"]).max() <= TOLERANCE["stress"]
    assert np.abs(pred["magmoms"] - ref["m"]).max() <= TOLERANCE["magmoms"]
