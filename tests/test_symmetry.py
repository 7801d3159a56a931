"""The symmetry check after surgery: a fidelity term on vector features is refused, naming the place."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mf_models import small_backbone
from mfwrap import MultiFidelity
from mfwrap.data import keys as K
from mfwrap.data.graph import GraphSpec, edge_vectors, structure_index
from mfwrap.ops import scatter_sum
from mfwrap.symmetry import check_wrapped_model


class VectorPotential(nn.Module):
    """An equivariant toy: per-atom vector features v_i = Σ_j r̂_ij ⊗ (W φ(r_ij) ⊙ x_j), (n, 3, F);
    ``mix`` is a linear layer over their channels (equivariant without a bias), ``scalar`` acts on
    the invariants |v_i|²; E = Σ_i readout(x_i + scalar(|v_i|²)) + μ_Zi."""

    def __init__(self) -> None:
        super().__init__()
        self.config = {}
        self.graph_spec = GraphSpec(cutoff=4.0)
        self.embedding = nn.Embedding(95, 8)
        self.radial = nn.Linear(4, 8, bias=False)  # a radial filter that vanishes at the cutoff
        self.mix = nn.Linear(8, 8, bias=False)
        self.scalar = nn.Linear(8, 8)
        self.readout = nn.Sequential(nn.Linear(8, 8), nn.SiLU(), nn.Linear(8, 1))
        self.reference = nn.Embedding(95, 1)

    def forward(self, batch):
        neighbour, centre = batch[K.EDGE_INDEX]
        vectors = edge_vectors(batch)
        r = vectors.norm(dim=-1, keepdim=True)
        basis = torch.exp(-((r - torch.linspace(1.0, 4.0, 4)) ** 2)) * 0.5 * (torch.cos(math.pi * r / 4.0) + 1)
        x = self.embedding(batch[K.ATOMIC_NUMBERS])
        messages = (vectors / r).unsqueeze(-1) * (self.radial(basis) * x[neighbour]).unsqueeze(1)
        v = self.mix(scatter_sum(messages, centre, x.shape[0]))
        per_atom = self.readout(x + self.scalar((v * v).sum(1))).squeeze(-1) + self.reference(
            batch[K.ATOMIC_NUMBERS]
        ).squeeze(-1)
        return {K.ENERGY: scatter_sum(per_atom, structure_index(batch), batch[K.CELL].shape[0])}


def test_a_place_whose_outputs_rotate_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"VectorPotential.mix: its outputs rotate with the structure"):
        MultiFidelity(VectorPotential(), ["a", "b"], "M", spec={"message": ["mix", "scalar"]})


class LayeredVectorPotential(VectorPotential):
    """The same network with its two channel-mixing layers in a list, so that the heuristics find both."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([self.mix, self.scalar])
        del self.mix, self.scalar

    @property
    def mix(self):
        return self.layers[0]

    @property
    def scalar(self):
        return self.layers[1]


def test_heuristics_skip_rotating_places_and_say_so():
    with pytest.warns(UserWarning, match="heuristics chose"):
        mf = MultiFidelity(LayeredVectorPotential(), ["a", "b"], "EM")
    assert mf.surgery.refused == ["layers.0"] and [p for m, p, *_ in mf.surgery.places if m == "M"] == ["layers.1"]
    assert "outputs rotate with the structure" in str(mf.surgery) and mf.surgery.symmetry.startswith("symmetry checked")


def test_the_randomised_check_names_the_place_that_breaks_symmetry():
    mf = MultiFidelity(VectorPotential(), ["a", "b"], "M", spec={"message": ["mix", "scalar"]}, check_symmetry=False)
    with pytest.raises(
        ValueError,
        match=(
            r"break the symmetry or smoothness of VectorPotential: rotation "
            r".*places responsible \(together\): \['mix'\]"
        ),
    ):
        check_wrapped_model(mf)


def test_fidelity_terms_on_invariant_features_pass_and_are_reported():
    mf = MultiFidelity(
        VectorPotential(),
        ["a", "b"],
        "EMR",
        spec={"embedding": "embedding", "message": ["scalar"], "readout": ["readout"]},
    )
    assert mf.surgery.symmetry.startswith("symmetry checked") and "symmetry checked" in str(mf.surgery)
    skipped = MultiFidelity(VectorPotential(), ["a", "b"], "M", spec={"message": ["mix"]}, check_symmetry=False)
    assert "not checked" in skipped.surgery.symmetry


@pytest.mark.parametrize("name", ["chgnet", "schnet", "dimenet"])
def test_shipped_backbones_pass_with_all_four_mechanisms(name):
    assert MultiFidelity(small_backbone(name), ["a", "b", "c"], "ECMR").surgery.symmetry.startswith("symmetry checked")


def test_a_fidelity_term_on_a_radial_filter_is_found_by_the_continuity_check():
    """DimeNet++ with M on every interaction linear, the basis filters included (the spec it had
    before the property tests found the 4.7 meV jump): refused, naming a minimal set of places that
    includes a basis filter (a bias there survives the envelope; e.g. lin_sbf2 with lin_down)."""
    spec = {"embedding": "emb.emb", "message": ["interaction_blocks.*"], "readout": ["output_heads.*"]}
    with pytest.raises(
        ValueError, match=r"energy jumps .* cutoff.*places responsible \(together\): \[[^]]*lin_(rbf|sbf)"
    ):
        MultiFidelity(small_backbone("dimenet"), ["a", "b"], "M", spec=spec)


class DiscontinuousPotential(VectorPotential):
    """The toy with a radial filter that does not vanish at the cutoff: the backbone itself jumps."""

    def __init__(self) -> None:
        super().__init__()
        self.radial = nn.Linear(4, 8)


def test_a_backbone_that_is_itself_discontinuous_is_reported_not_blamed_on_the_wrapper():
    with pytest.warns(UserWarning, match="DiscontinuousPotential itself fails the checks without fidelity terms"):
        mf = MultiFidelity(DiscontinuousPotential(), ["a", "b"], "M", spec={"message": ["scalar"]})
    assert mf.surgery.symmetry.startswith("symmetry not established")


class IsotropicPotential(VectorPotential):
    """The toy with a rank-2 feature, T_i = Σ_j r̂_ij ⊗ r̂_ij (W φ ⊙ x_j), (n, 3, 3, F); ``iso`` mixes the
    channels of its isotropic part tr(T)/3 · I — invariant values on any probe, yet rows × 3 × 3 × F."""

    def __init__(self) -> None:
        super().__init__()
        self.iso = nn.Linear(8, 8, bias=False)

    def forward(self, batch):
        neighbour, centre = batch[K.EDGE_INDEX]
        vectors = edge_vectors(batch)
        r = vectors.norm(dim=-1, keepdim=True)
        unit = vectors / r
        envelope = 0.5 * (torch.cos(math.pi * r / 4.0) + 1)
        x = self.embedding(batch[K.ATOMIC_NUMBERS])
        basis = torch.exp(-((r - torch.linspace(1.0, 4.0, 4)) ** 2))
        weights = self.radial(basis) * envelope * x[neighbour]
        tensor = scatter_sum(
            (unit[:, :, None] * unit[:, None, :])[..., None] * weights[:, None, None, :], centre, x.shape[0]
        )
        trace = tensor.diagonal(dim1=1, dim2=2).sum(-1) / 3
        isotropic = self.iso(torch.eye(3)[None, :, :, None] * trace[:, None, None, :])
        invariants = isotropic.pow(2).sum((1, 2))
        per_atom = self.readout(x + self.scalar(invariants)).squeeze(-1)
        return {K.ENERGY: scatter_sum(per_atom, structure_index(batch), batch[K.CELL].shape[0])}


def test_a_place_with_components_between_rows_and_channels_is_refused_even_if_its_values_are_invariant():
    with pytest.raises(
        ValueError, match=r"IsotropicPotential.iso: its outputs \[\(7, 3, 3, 8\)\] have components between rows"
    ):
        MultiFidelity(IsotropicPotential(), ["a", "b"], "M", spec={"message": ["iso", "scalar"]})
    mf = MultiFidelity(IsotropicPotential(), ["a", "b"], "M", spec={"message": ["scalar"]})
    assert mf.surgery.symmetry.startswith("symmetry checked")


def test_probe_elements_come_from_the_backbone_when_it_lists_them():
    from mfwrap.probe import DEFAULT_PROBE_ELEMENTS, probe_elements

    backbone = VectorPotential()
    assert probe_elements(backbone) == DEFAULT_PROBE_ELEMENTS == (8, 3, 26, 15)
    backbone.supported_numbers = [6, 1]
    assert probe_elements(backbone) == (1, 6, 1, 6)
    mf = MultiFidelity(
        backbone, ["a", "b"], "EMR", spec={"embedding": "embedding", "message": ["scalar"], "readout": ["readout"]}
    )
    assert probe_elements(mf) == (1, 6, 1, 6) and mf.surgery.symmetry.startswith("symmetry checked")
