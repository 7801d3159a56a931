"""e3nn layers that mix scalars and vectors: the fidelity term goes on their 0e columns only."""

from __future__ import annotations

import math

import pytest
import torch
from ase.build import bulk
from e3nn import o3
from torch import nn

from mfwrap import MultiFidelity, predict
from mfwrap.data import keys as K
from mfwrap.data.graph import GraphSpec, edge_vectors, structure_index
from mfwrap.mechanisms import FidelityEmbedding, FidelityLinear
from mfwrap.ops import scatter_sum
from mfwrap.symmetry import check_wrapped_model, declares_non_scalars, scalar_columns

FEATURES = "8x0e+4x1o"  # columns 0..7 scalars, 8..19 four vectors (mul-major, 3 components each)


class IrrepsPotential(nn.Module):
    """h_i = [x_i ‖ Σ_j r̂_ij ⊗ (W φ(r_ij) ⊙ x_j)[:4]] as "8x0e+4x1o"; ``mix`` and ``embed`` are e3nn
    linears over it; E = Σ_i readout(h_i^0e + |h_i^1o|²) + μ_Zi. ``embed`` maps the one-hot atomic
    number to scalars and (zero-input) vector channels, like an e3nn embedding with vector parts."""

    def __init__(self) -> None:
        super().__init__()
        self.config = {}
        self.graph_spec = GraphSpec(cutoff=4.0)
        self.embed = o3.Linear("95x0e", "8x0e+2x1o")
        self.radial = nn.Linear(4, 8, bias=False)
        self.mix = o3.Linear(FEATURES, FEATURES)
        self.readout = nn.Sequential(nn.Linear(12, 8), nn.SiLU(), nn.Linear(8, 1))
        self.reference = nn.Embedding(95, 1)

    def forward(self, batch):
        neighbour, centre = batch[K.EDGE_INDEX]
        vectors = edge_vectors(batch)
        r = vectors.norm(dim=-1, keepdim=True)
        basis = torch.exp(-((r - torch.linspace(1.0, 4.0, 4, dtype=r.dtype)) ** 2))
        envelope = 0.5 * (
            torch.cos(math.pi * r / 4.0) + 1
        )  # after the filter: a bias there still vanishes at the cutoff
        onehot = nn.functional.one_hot(batch[K.ATOMIC_NUMBERS], 95).to(r.dtype)
        embedded = self.embed(onehot)
        x = embedded[:, :8] + embedded[:, 8:].pow(2).sum(-1, keepdim=True)
        messages = (vectors / r).unsqueeze(1) * (self.radial(basis) * envelope * x[neighbour])[:, :4, None]  # (E, 4, 3)
        v = scatter_sum(messages, centre, x.shape[0]).reshape(-1, 12)
        h = self.mix(torch.cat([x, v], dim=1))
        invariants = torch.cat([h[:, :8], h[:, 8:].reshape(-1, 4, 3).pow(2).sum(-1)], dim=1)
        per_atom = self.readout(invariants).squeeze(-1) + self.reference(batch[K.ATOMIC_NUMBERS]).squeeze(-1)
        return {K.ENERGY: scatter_sum(per_atom, structure_index(batch), batch[K.CELL].shape[0])}


SPEC = {"embedding": "embed", "message": ["mix", "radial"], "readout": ["readout"], "linear_types": {"Linear": None}}


def test_scalar_columns_follow_the_e3nn_layout():
    assert scalar_columns(o3.Linear(FEATURES, FEATURES)).tolist() == list(range(8))
    layer = o3.Linear("2x1o+3x0e+1x0o+2x0e", "2x1o+3x0e+1x0o+2x0e")
    assert scalar_columns(layer).tolist() == [6, 7, 8, 10, 11]  # 0o (a pseudoscalar) is not a scalar
    assert scalar_columns(o3.Linear("4x1o", "4x1o")).tolist() == [] and scalar_columns(nn.Linear(3, 3)) is None
    assert declares_non_scalars(layer) and not declares_non_scalars(o3.Linear("4x0e", "4x0e"))


def test_terms_on_mixed_layers_touch_only_their_scalar_columns_and_keep_symmetry():
    torch.manual_seed(0)
    mf = MultiFidelity(IrrepsPotential(), ["low", "high"], "ECMR", spec=SPEC)
    # embed's vector part is zero here (e3nn cannot map 0e inputs to 1o), so only its irreps tell that it rotates
    assert mf.surgery.restricted == {"embed": (8, 14), "mix": (8, 20)}
    assert "0e columns only" in str(mf.surgery) and mf.surgery.symmetry.startswith("symmetry checked")
    mix, embed = mf.backbone.mix, mf.backbone.embed
    assert (
        isinstance(mix, FidelityLinear)
        and mix.fidelity_weight.shape == (8, 2)
        and mix.channels.tolist() == list(range(8))
    )
    assert isinstance(embed, FidelityEmbedding) and embed.fidelity_vectors.shape == (2, 8)
    assert mf.backbone.radial.channels is None  # an invariant layer keeps its term on every column
    structure = bulk("Si", "diamond", a=5.43, cubic=True)
    low, high = (predict(mf, [structure], fidelity=f)[0]["energy"] for f in ("low", "high"))
    assert low == pytest.approx(high, rel=1e-6)  # identity at initialisation
    with torch.no_grad():
        mix.fidelity_weight[:, 1].normal_()
    assert abs(predict(mf, [structure], fidelity="high")[0]["energy"] - high) > 1e-4  # the term acts
    assert predict(mf, [structure], fidelity="low")[0]["energy"] == pytest.approx(low, rel=1e-6)


def test_declared_irreps_restrict_the_terms_even_when_the_checks_are_skipped():
    mf = MultiFidelity(IrrepsPotential(), ["low", "high"], "EM", spec=SPEC, check_symmetry=False)
    assert mf.surgery.restricted == {"embed": (8, 14), "mix": (8, 20)} and mf.backbone.mix.fidelity_weight.shape == (
        8,
        2,
    )


def test_a_term_on_every_column_of_a_mixed_layer_is_caught_by_the_check():
    mf = MultiFidelity(
        IrrepsPotential(),
        ["low", "high"],
        "M",
        spec={"message": ["mix"], "linear_types": {"Linear": None}},
        check_symmetry=False,
    )
    mf.backbone.mix.channels = None  # as if the surgery ignored the irreps: vector components get a bias
    with torch.no_grad():
        mf.backbone.mix.fidelity_weight.data = torch.zeros(20, 2)
    with pytest.raises(ValueError, match=r"break the symmetry .*places responsible \(together\): \['mix'\]"):
        check_wrapped_model(mf)


def test_a_mixed_layer_without_declared_irreps_is_still_refused():
    class Undeclared(IrrepsPotential):
        def __init__(self) -> None:
            super().__init__()
            self.mix = nn.Linear(20, 20, bias=False)  # mixes scalars and vector components, declares no irreps

    with pytest.raises(
        ValueError, match=r"Undeclared.mix: its outputs rotate .* declares no scalar \(0e\) output columns"
    ):
        MultiFidelity(Undeclared(), ["low", "high"], "M", spec={"message": ["mix"]})
