"""A SevenNet written as a sevenn checkpoint (``mfwrap export --format sevenn``): sevenn's own
``SevenNetCalculator`` loads it and predicts what the exported model predicts."""

from __future__ import annotations

import pytest
import torch
from test_sevenn import SMALL, _assert_equals_sevenn, cells  # noqa: F401  (cells: a fixture)

import mfwrap
from backbones.sevenn import SevenNet, model_config
from mfwrap.cli import main
from mfwrap.symmetry import randomise_fidelity_parameters

pytestmark = pytest.mark.filterwarnings("ignore:No tensor product accelerator")  # sevenn's calculator on CPU


def test_an_exported_fidelity_runs_in_sevenns_calculator(cells, tmp_path):  # noqa: F811
    from sevenn.calculator import SevenNetCalculator

    structures = cells[:2]
    torch.manual_seed(0)
    options = {"chemical_species": ["Si", "Na", "Cl"], "use_bias_in_linear": True, "shift": [0.0] * 3}
    backbone = SevenNet(**{**SMALL, **options})  # E and M fold into the linears' biases, C into the shift
    model = mfwrap.MultiFidelity(backbone, ["pbe", "r2scan"], "ECMR")
    model.draw_fidelity_parameters()
    randomise_fidelity_parameters(model, scale=0.3, seed=1)
    model.save(tmp_path / "mf.pt")
    out = tmp_path / "r2scan.pth"
    assert (
        main(["export", str(tmp_path / "mf.pt"), "--fidelity", "r2scan", "--output", str(out), "--format", "sevenn"])
        == 0
    )
    calculator = SevenNetCalculator(model=str(out), device="cpu")
    _assert_equals_sevenn(model, calculator, structures, fidelity="r2scan")
    other = mfwrap.predict(model, structures, fidelity="pbe")
    assert all(
        abs(a["energy"] - b["energy"]) > 1e-2
        for a, b in zip(other, mfwrap.predict(model, structures, fidelity="r2scan"))
    )


def test_a_pretrained_sevennet_is_written_with_its_complete_config(cells, tmp_path):  # noqa: F811
    from sevenn.calculator import SevenNetCalculator

    pretrained = SevenNet.from_pretrained("7net-0")  # config {"pretrained": "7net-0"}: sevenn's own is written
    pretrained.save_sevenn(tmp_path / "7net-0.pth")
    _assert_equals_sevenn(pretrained, SevenNetCalculator(model=str(tmp_path / "7net-0.pth"), device="cpu"), cells[:1])


def test_an_adapter_without_config_is_a_clear_error(tmp_path):
    from sevenn.model_build import build_E3_equivariant_model

    adapter = SevenNet.from_sevenn(build_E3_equivariant_model(model_config(SMALL)))
    with pytest.raises(ValueError, match="adapted from a sevenn model without its config"):
        adapter.save_sevenn(tmp_path / "bare.pth")
    assert not any(tmp_path.iterdir())
