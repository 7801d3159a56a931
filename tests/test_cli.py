"""The mfwrap command: train from YAML, evaluate and predict with the checkpoint, --help."""

import json
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress

sys.path.insert(0, str(Path(__file__).parent / "train"))
from mfwrap.cli import build_parser, main  # noqa: E402
from mfwrap.data.graph import EV_PER_A3_TO_GPA  # noqa: E402
from tiny_backbone import TinyBackbone, labelled_graphs, random_structures  # noqa: E402


def _write(path, count, seed, fidelity, energy_key="energy", magmoms=True):
    """extxyz of tiny-teacher labels; low fidelity keeps its energy in info under ``energy_key``."""
    graphs = labelled_graphs(count, seed, fidelity, TinyBackbone().graph_spec, magmoms=magmoms)
    frames = random_structures(count, seed)
    for atoms, graph in zip(frames, graphs):
        results = {"forces": graph.forces.numpy(),
                   "stress": full_3x3_to_voigt_6_stress(graph.stress[0].numpy() / EV_PER_A3_TO_GPA)}
        if magmoms:
            results["magmoms"] = graph.magmoms.numpy()
        if energy_key == "energy":
            results["energy"] = float(graph.energy)
        else:
            atoms.info[energy_key] = float(graph.energy)
        atoms.calc = SinglePointCalculator(atoms, **results)
    ase.io.write(path, frames, format="extxyz")


def test_train_evaluate_predict(tmp_path, capsys):
    _write(tmp_path / "low.xyz", 12, 0, 0, energy_key="pbe_energy", magmoms=False)
    _write(tmp_path / "high.xyz", 8, 1, 1)
    _write(tmp_path / "test.xyz", 4, 2, 1)
    config = tmp_path / "run.yaml"
    config.write_text(f"""
method: multi_fidelity
model: {{backbone: "tiny_backbone:TinyBackbone", kwargs: {{features: 8}}, mechanisms: EMR}}
data:
  fidelities: [pbe, r2scan]
  train:
    - {{path: {tmp_path / 'low.xyz'}, fidelity: pbe, keys: {{energy: pbe_energy, forces: forces, stress: stress}}}}
    - {{path: {tmp_path / 'high.xyz'}, fidelity: r2scan, limit: 6}}
  test: [{{path: {tmp_path / 'test.xyz'}, fidelity: r2scan}}]
train: {{epochs: 2, output_dir: {tmp_path / 'out'}, progress: false}}
""")
    assert main(["train", str(config)]) == 0
    printed = capsys.readouterr().out
    assert "test errors at fidelity 'r2scan'" in printed and "forces" in printed and "magmoms" in printed
    best = tmp_path / "out" / "multi_fidelity" / "best.pt"
    history = json.loads((best.parent / "metrics.json").read_text())
    assert history["config"]["epochs"] == 2

    assert main(["evaluate", str(best), str(tmp_path / "test.xyz"), "--fidelity", "r2scan",
                 "--json", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["r2scan"]["forces"]["mae"] == pytest.approx(history["test"]["r2scan"]["forces"]["mae"], rel=1e-5)
    with pytest.raises(SystemExit, match="choose one with --fidelity"):
        main(["evaluate", str(best), str(tmp_path / "test.xyz")])

    assert main(["predict", str(best), str(tmp_path / "test.xyz"), "--fidelity", "r2scan",
                 "--output", str(tmp_path / "pred.xyz")]) == 0
    predicted = ase.io.read(tmp_path / "pred.xyz", index=":")
    assert len(predicted) == 4 and np.isfinite(predicted[0].get_forces()).all()
    assert predicted[0].get_magnetic_moments().shape == (4,)


def test_help_explains_every_option():
    parser = build_parser()
    for command in ("train", "evaluate", "predict"):
        sub = parser._subparsers._group_actions[0].choices[command]
        for action in sub._actions:
            assert action.help, f"{command}: option {action.dest} has no help"
    train_help = parser._subparsers._group_actions[0].choices["train"].format_help()
    assert "delta_reference" in train_help and "mechanisms" in train_help and "lmfp" in train_help
