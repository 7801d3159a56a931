"""Surgery on a user's model: heuristic specs, probe-based row kinds, overrides and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mf_models import batch_of, evaluate, perturb, random_crystal, small_backbone
from mfwrap import MultiFidelity
from mfwrap.data import keys as K
from mfwrap.data.graph import GraphSpec, edge_vectors
from mfwrap.ops import scatter_sum
from mfwrap.surgery import FidelitySpec, parse_mechanisms


class ToyBlock(nn.Module):
    """h_i ← h_i + U Σ_j h_j ⊙ F(rbf_ij); ``mode`` adds a deliberately awkward extra layer."""

    def __init__(self, width: int, mode: str = "") -> None:
        super().__init__()
        self.edge_filter = nn.Linear(4, width)
        self.update = nn.Linear(width, width)
        self.extra = nn.Linear(width // 2 if mode == "halves" else width, width // 2 if mode == "halves" else width)
        self.mode = mode

    def forward(self, h, edge_index, rbf):
        message = h.index_select(0, edge_index[0]) * self.edge_filter(rbf)
        if self.mode == "shared":  # one layer on edge rows and on atom rows
            message = self.extra(message)
        h = h + self.update(scatter_sum(message, edge_index[1], h.shape[0]))
        if self.mode == "shared":
            h = self.extra(h)
        if self.mode == "halves":  # rows are half-atoms: no row kind
            h = self.extra(h.reshape(-1, h.shape[1] // 2)).reshape(h.shape)
        return h


class ToyPotential(nn.Module):
    """A user's PyG-style potential with no fidelity_spec."""

    def __init__(self, mode: str = "") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.graph_spec = GraphSpec(cutoff=3.5)
        self.species = nn.Embedding(95, 8)
        self.layers = nn.ModuleList([ToyBlock(8, mode), ToyBlock(8, mode)])
        self.energy_head = nn.Sequential(nn.Linear(8, 8), nn.SiLU(), nn.Linear(8, 1))

    def forward(self, batch):
        distance = torch.linalg.vector_norm(edge_vectors(batch), dim=-1, keepdim=True)
        rbf = torch.exp(-((distance - torch.arange(1.0, 5.0)) ** 2))
        h = self.species(batch[K.ATOMIC_NUMBERS])
        for layer in self.layers:
            h = layer(h, batch[K.EDGE_INDEX], rbf)
        energy = self.energy_head(h).squeeze(-1)
        return {K.ENERGY: scatter_sum(energy, batch.batch, batch[K.CELL].shape[0])}


def test_heuristics_report_their_choice_and_keep_identity():
    toy = ToyPotential()
    with pytest.warns(UserWarning, match="heuristics chose"):
        mf = MultiFidelity(toy, ["a", "b"], "ECMR")
    report = mf.surgery
    assert report.spec == FidelitySpec(embedding="species", message=("layers.*",), readout=("energy_head",))
    assert [report.count(m) for m in "ECMR"] == [1, 0, 4, 1]
    kinds = {path: kind for _, path, _, kind in report.places}
    assert kinds["layers.0.edge_filter"] == "edge" and kinds["layers.1.update"] == "atom"
    assert report.skipped == ["layers.0.extra", "layers.1.extra"]  # never called by the forward
    assert "layers.1.edge_filter (edge rows, Linear)" in str(report)
    batch = batch_of([random_crystal(np.random.default_rng(0)) for _ in range(2)], toy.graph_spec, [1, 0])
    reference, wrapped = evaluate(toy, batch), evaluate(mf, batch)
    for key in (K.ENERGY, K.FORCES, K.STRESS):
        np.testing.assert_allclose(wrapped[key], reference[key], rtol=1e-5, atol=1e-6)
    perturb(mf, "M")
    assert np.abs(evaluate(mf, batch)[K.ENERGY] - reference[K.ENERGY]).max() > 1e-4


def test_layer_with_rows_of_two_kinds_is_an_error_unless_overridden():
    with pytest.raises(ValueError, match="rows of different kinds"):
        MultiFidelity(ToyPotential("shared"), ["a", "b"], "M", spec={"message": ["layers.*"]})


def test_layer_whose_rows_match_no_kind_is_an_error_and_a_wrong_override_fails_at_run_time():
    spec = {"message": ["layers.*"]}
    with pytest.raises(ValueError, match="match no row kind"):
        MultiFidelity(ToyPotential("halves"), ["a", "b"], "M", spec=spec)
    with pytest.raises(RuntimeError, match="layers.0.extra.*row kind varies"):  # the symmetry check's forward finds it
        MultiFidelity(ToyPotential("halves"), ["a", "b"], "M", spec=spec, row_kinds={"layers.*.extra": "atom"})
    mf = MultiFidelity(
        ToyPotential("halves"), ["a", "b"], "M", spec=spec, row_kinds={"layers.*.extra": "atom"}, check_symmetry=False
    )
    batch = batch_of([random_crystal(np.random.default_rng(0))], mf.graph_spec, [0])
    with pytest.raises(RuntimeError, match="layers.0.extra.*row kind varies"):
        mf(batch)


def test_bad_specs_are_clear_errors():
    toy = ToyPotential()
    with pytest.raises(ValueError, match="unknown backbone spec field"):
        MultiFidelity(toy, ["a"], "E", spec={"embeding": "species"})
    with pytest.raises(ValueError, match="no such module"):
        MultiFidelity(toy, ["a"], "E", spec={"embedding": "atom_types"})
    with pytest.raises(ValueError, match="nested"):
        MultiFidelity(toy, ["a"], "MR", spec={"message": ["layers.*"], "readout": ["layers.0"]})
    with pytest.raises(ValueError, match="mechanism R has no place"):
        MultiFidelity(toy, ["a"], "R", spec={"embedding": "species"})
    with pytest.raises(ValueError, match="match no place"):
        MultiFidelity(toy, ["a"], "M", spec={"message": ["layers.*"]}, row_kinds={"layer.*": "edge"})
    with pytest.raises(ValueError, match="kinds must be among"):
        MultiFidelity(toy, ["a"], "M", spec={"message": ["layers.*"]}, row_kinds={"layers.*": "bond"})


def test_parse_mechanisms():
    assert parse_mechanisms("rem") == "EMR" and parse_mechanisms("") == "" and parse_mechanisms("MRCE") == "ECMR"
    for bad in ("EE", "ECMRX", "N"):
        with pytest.raises(ValueError):
            parse_mechanisms(bad)


def test_surgery_places_of_the_shipped_backbones():
    """Which layers each shipped spec touches (the numbers quoted in the closing note)."""
    expected = {
        "schnet": (1, 10, 1, "edge", "atom"),
        "dimenet": (1, 22, 3, "edge"),  # not the basis filters lin_rbf*, lin_sbf*
        "chgnet": (1, 6, 1, "edge", "angle"),
    }  # n_conv = 3: 3 atom, 2 bond, 1 angle
    for name, (e, m, r, *row_kinds) in expected.items():
        report = MultiFidelity(small_backbone(name), ["a", "b"], "ECMR").surgery
        assert (report.count("E"), report.count("M"), report.count("R")) == (e, m, r), name
        assert set(row_kinds) <= {kind for letter, _, _, kind in report.places if letter == "M"}


class TwoEmbeddingPotential(ToyPotential):
    """ToyPotential with a second 100-entry embedding, used per structure (a "state" embedding, as
    in matgl's models) or, with ``pair=True``, on atoms as well (then the heuristics cannot decide)."""

    def __init__(self, pair: bool = False) -> None:
        super().__init__()
        self.state = nn.Embedding(100, 8)
        self.pair = pair

    def forward(self, batch):
        out = super().forward(batch)
        index = batch[K.ATOMIC_NUMBERS] if self.pair else torch.zeros(batch[K.CELL].shape[0], dtype=torch.long)
        extra = self.state(index).sum(-1)
        extra = scatter_sum(extra, batch.batch, batch[K.CELL].shape[0]) if self.pair else extra
        return {K.ENERGY: out[K.ENERGY] + 0.01 * extra}


def test_heuristics_pick_the_embedding_called_on_atoms_and_say_what_they_could_not_decide():
    from mfwrap.surgery import propose_spec, undecided_places

    assert (
        propose_spec(TwoEmbeddingPotential()).embedding == "species" and undecided_places(TwoEmbeddingPotential()) == []
    )
    both = TwoEmbeddingPotential(pair=True)
    assert propose_spec(both).embedding is None
    assert undecided_places(both) == [
        "embedding: 2 candidate element embeddings (nn.Embedding with >= 84 entries, called "
        "on atoms) ['species', 'state']; none chosen"
    ]
    with (
        pytest.warns(UserWarning, match=r"could not decide: embedding: 2 candidate"),
        pytest.raises(ValueError, match="mechanism E has no place"),
    ):
        MultiFidelity(both, ["a", "b"], "ECMR")
    plain = nn.Module()
    plain.graph_spec = GraphSpec(cutoff=3.0)
    assert [note.split(":")[0] for note in undecided_places(plain)] == ["embedding", "message", "readout"]
