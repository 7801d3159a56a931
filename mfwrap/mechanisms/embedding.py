"""E: the additive fidelity embedding of the initial atom features."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from mfwrap.fidelity import FidelityContext
from mfwrap.mechanisms.linear import spread_columns


class FidelityEmbedding(nn.Module):
    r"""Adds a learned vector per fidelity to the output of the atomic-number embedding (Eq. 4):

    .. math::  v_i^0 = X_{Z_i} + X_{f_i}

    ``embedding`` is the backbone's own module, called unchanged with whatever arguments the
    backbone passes; ``fidelity_vectors`` (n_F, features) is zero at initialisation, so the
    output then equals the backbone's. ``row_kind`` names the rows of the embedding's output
    (atoms for every known backbone). ``channels`` (optional) restricts X_f to those output
    columns (the ``0e`` columns of an e3nn embedding with vector parts); X_f is then
    (n_F, len(channels)).
    """

    def __init__(
        self,
        embedding: nn.Module,
        context: FidelityContext,
        row_kind: str,
        features: int,
        name: str = "",
        channels: Tensor | None = None,
    ) -> None:
        super().__init__()
        reference = next(embedding.parameters(), None)
        self.embedding = embedding
        self.features = features
        device = reference.device if reference is not None else None
        self.register_buffer("channels", None if channels is None else channels.to(device), persistent=False)
        self.fidelity_vectors = nn.Parameter(
            torch.zeros(
                context.num_fidelities,
                features if channels is None else len(channels),
                dtype=reference.dtype if reference is not None and reference.is_floating_point() else None,
                device=reference.device if reference is not None else None,
            )
        )
        self.context = context
        self.row_kind = row_kind
        self.name = name

    def forward(self, *args, **kwargs) -> Tensor:
        out = self.embedding(*args, **kwargs)
        f = self.context.rows(self.row_kind, out.shape[0], self.name)
        term = spread_columns(self.fidelity_vectors.index_select(0, f), self.channels, self.features)
        return out + term.view(f.shape[0], *([1] * (out.dim() - 2)), out.shape[-1])

    def draw_at_random(self) -> None:
        """Redraw X_f as a fresh row of the backbone's embedding table would be drawn: N(0, s²), s the
        standard deviation of the wrapped embedding's weights (1 if it has none); global torch RNG."""
        weights = [p.detach().flatten() for p in self.embedding.parameters() if p.is_floating_point()]
        scale = float(torch.cat(weights).std()) if weights and sum(w.numel() for w in weights) > 1 else 1.0
        with torch.no_grad():
            self.fidelity_vectors.normal_(0.0, scale)

    def folded(self, fidelity: int) -> nn.Module:
        """A copy of the wrapped embedding whose output is ``X_Z + X_f`` for fidelity index ``fidelity``,
        with no fidelity term: X_f is added to its bias (a parameter ``bias`` with one entry per column of
        X_f: an ``nn.Linear``'s, or an e3nn linear's, which spans its ``0e`` columns in order) or to every
        row of its table (an ``nn.Embedding``, or the one ``nn.Embedding`` inside it whose rows it returns,
        e.g. CHGNet's ``AtomEmbedding``). ValueError for a module that has neither, which cannot carry X_f."""
        module = copy.deepcopy(self.embedding)
        vector = self.fidelity_vectors[fidelity].detach()
        inner = [m for m in module.modules() if isinstance(m, nn.Embedding)]
        bias = getattr(module, "bias", None)
        if isinstance(bias, Tensor) and bias.numel() == vector.numel():  # one entry per column of X_f
            target, term = bias, vector.view_as(bias)
        elif len(inner) == 1 and inner[0].embedding_dim == self.features:
            target, term = inner[0].weight, spread_columns(vector, self.channels, self.features)
        else:
            raise ValueError(
                f"cannot fold the fidelity embedding X_f into {self.name} ({type(module).__name__}): it is neither an "
                "element table (nn.Embedding) nor a layer with a bias, so the plain model has no place for X_f"
            )
        with torch.no_grad():
            target.add_(term.to(target))
        return module

    def add_fidelity(self, like: int) -> None:
        """Append a vector for a new fidelity, equal to the vector of fidelity ``like``."""
        vectors = self.fidelity_vectors.detach()
        self.fidelity_vectors = nn.Parameter(torch.cat([vectors, vectors[like : like + 1]], dim=0))

    def extra_repr(self) -> str:
        columns = "" if self.channels is None else f", columns={len(self.channels)} of {self.features}"
        return f"fidelities={self.fidelity_vectors.shape[0]}, rows={self.row_kind}{columns}"
