"""``mfwrap export``: a fidelity of a model file written as a plain model file, and its refusals."""

import numpy as np
import pytest
import torch
from test_cli import refusal

import mfwrap
from backbones.chgnet import CHGNet
from mf_models import batch_of, evaluate, random_crystal, small_backbone
from mfwrap.cli import main
from mfwrap.delta import DeltaModel
from mfwrap.model_file import read_payload, save_model
from mfwrap.symmetry import randomise_fidelity_parameters


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """(a saved two-fidelity CHGNet with distinct fidelities, its path)."""
    torch.manual_seed(0)
    model = mfwrap.MultiFidelity(small_backbone("chgnet"), ["pbe", "r2scan"], "ECMR")
    randomise_fidelity_parameters(model, scale=0.3, seed=1)
    path = tmp_path_factory.mktemp("model") / "mf.pt"
    model.save(path)
    return model, path


def test_export_writes_the_fidelity_as_a_plain_model_file(model_file, tmp_path, capsys):
    model, path = model_file
    out = tmp_path / "r2scan.pt"
    assert main(["export", str(path), "--fidelity", "r2scan", "--output", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"exported fidelity 'r2scan' of {path} to {out} (mfwrap format)"
    exported = mfwrap.load(out)
    assert type(exported) is CHGNet
    assert read_payload(out)["target_fidelity"] == "r2scan"
    cells = [random_crystal(np.random.default_rng(5)) for _ in range(2)]
    for fidelity, expected in ((1, True), (0, False)):
        wrapped = evaluate(model, batch_of(cells, model.graph_spec, [fidelity] * 2))
        plain = evaluate(exported, batch_of(cells, model.graph_spec, [0] * 2))
        assert np.allclose(plain["energy"], wrapped["energy"], rtol=1e-5) is expected
        if expected:
            for key in ("forces", "stress", "magmoms"):
                np.testing.assert_allclose(plain[key], wrapped[key], rtol=1e-4, atol=1e-5)


def test_an_existing_output_is_replaced_only_with_overwrite(model_file, tmp_path):
    _, path = model_file
    out = tmp_path / "pbe.pt"
    out.write_text("keep")
    assert "exists; pass --overwrite" in refusal(["export", str(path), "--fidelity", "pbe", "--output", str(out)])
    assert out.read_text() == "keep"
    assert main(["export", str(path), "--fidelity", "pbe", "--output", str(out), "--overwrite"]) == 0
    assert type(mfwrap.load(out)) is CHGNet
    assert "is the input" in refusal(["export", str(path), "--fidelity", "pbe", "--output", str(path), "--overwrite"])


def test_a_missing_or_unknown_fidelity_and_an_unknown_format_are_refused(model_file, tmp_path):
    _, path = model_file
    out = str(tmp_path / "out.pt")
    message = refusal(["export", str(path), "--output", out])
    assert "2 fidelities ['pbe', 'r2scan']: choose one with --fidelity" in message
    message = refusal(["export", str(path), "--fidelity", "scan", "--output", out])
    assert "unknown fidelity 'scan' (known: ['pbe', 'r2scan'])" in message
    message = refusal(["export", str(path), "--fidelity", "pbe", "--output", out, "--format", "xyz"])
    assert "--format xyz: CHGNet can be written as mfwrap, chgnet only" in message


def test_a_delta_model_is_refused(tmp_path):
    path = tmp_path / "delta.pt"
    save_model(DeltaModel(small_backbone("chgnet"), small_backbone("chgnet")), path)
    message = refusal(["export", str(path), "--output", str(tmp_path / "out.pt")])
    assert "cannot export a Δ model" in message


def test_a_plain_model_file_is_written_as_it_is_in_another_format(tmp_path, capsys):
    path, out = tmp_path / "plain.pt", tmp_path / "plain.pth.tar"
    save_model(small_backbone("chgnet"), path, fidelity_names=["pbe", "r2scan"], target_fidelity="r2scan")
    assert main(["export", str(path), "--output", str(out), "--format", "chgnet"]) == 0
    assert "exported fidelity 'r2scan'" in capsys.readouterr().out
    assert set(torch.load(out, weights_only=True)["model"]) == {"model_args", "state_dict"}
    assert "single-fidelity model of fidelity 'r2scan'" in refusal(
        ["export", str(path), "--fidelity", "pbe", "--output", str(tmp_path / "pbe.pt")]
    )
