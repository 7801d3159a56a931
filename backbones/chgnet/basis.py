"""Radial and angular basis expansions of CHGNet.

Radial: a sine ("spherical Bessel of order 0") basis times a polynomial envelope,

    φ_k(r) = sqrt(2 / r_c) · sin(ω_k r / r_c) / r · u(r / r_c),    ω_k = k π  (k = 1..K, learnable)
    u(x)   = 1 − (p+1)(p+2)/2 · x^p + p(p+2) · x^(p+1) − p(p+1)/2 · x^(p+2)   for x < 1, else 0,

so φ_k and its first two derivatives vanish at the cutoff r_c (Å); p is the envelope exponent
(CHGNet's ``cutoff_coeff``). CHGNet uses two instances: atom-graph cutoff and bond-graph cutoff.

Angular: a Fourier series of the bond angle θ ∈ [0, π],

    ψ(θ) = [1/√2, sin(ν_1 θ), …, sin(ν_N θ), cos(ν_1 θ), …, cos(ν_N θ)] / √π,  ν_n = n (learnable),

with N = (num_angular − 1) / 2.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class PolynomialEnvelope(nn.Module):
    """u(r / r_c) above: 1 at r = 0, 0 with two vanishing derivatives at r = r_c; p = 0 disables it."""

    def __init__(self, cutoff: float, exponent: int) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        self.exponent = exponent
        p = exponent
        self.a = -(p + 1) * (p + 2) / 2
        self.b = p * (p + 2)
        self.c = -p * (p + 1) / 2

    def forward(self, r: Tensor) -> Tensor:
        if self.exponent == 0:
            return torch.ones_like(r)
        x = r / self.cutoff
        p = self.exponent
        value = 1 + self.a * x**p + self.b * x ** (p + 1) + self.c * x ** (p + 2)
        return torch.where(x < 1, value, torch.zeros_like(x))


class RadialBessel(nn.Module):
    """φ(r): distances (m,) Å → (m, num_radial) basis values (1/Å^1.5), zero beyond ``cutoff``.

    Args:
        num_radial: K, number of basis functions.
        cutoff: r_c, Å.
        envelope_exponent: p of the polynomial envelope (CHGNet's ``cutoff_coeff``).
        learnable: whether the frequencies ω_k are trained.
    """

    def __init__(self, num_radial: int, cutoff: float, envelope_exponent: int, learnable: bool = True) -> None:
        super().__init__()
        self.inv_cutoff = 1.0 / cutoff
        self.norm_const = (2.0 * self.inv_cutoff) ** 0.5
        frequencies = math.pi * torch.arange(1, num_radial + 1, dtype=torch.float32)
        if learnable:
            self.frequencies = nn.Parameter(frequencies)
        else:
            self.register_buffer("frequencies", frequencies)
        self.envelope = PolynomialEnvelope(cutoff, envelope_exponent)

    def forward(self, r: Tensor) -> Tensor:
        r = r.unsqueeze(-1)
        scaled = r * self.inv_cutoff
        return self.envelope(r) * (self.norm_const * torch.sin(self.frequencies * scaled) / r)


class FourierAngle(nn.Module):
    """ψ(θ): angles (A,) rad → (A, num_angular) Fourier features; ``num_angular`` must be odd."""

    def __init__(self, num_angular: int, learnable: bool = True) -> None:
        super().__init__()
        if num_angular % 2 != 1:
            raise ValueError(f"num_angular must be odd (1 constant + sines + cosines), got {num_angular}")
        frequencies = torch.arange(1, (num_angular - 1) // 2 + 1, dtype=torch.float32)
        if learnable:
            self.frequencies = nn.Parameter(frequencies)
        else:
            self.register_buffer("frequencies", frequencies)

    def forward(self, theta: Tensor) -> Tensor:
        phase = theta.unsqueeze(-1) * self.frequencies
        constant = torch.full_like(theta, 1.0 / math.sqrt(2.0)).unsqueeze(-1)
        return torch.cat([constant, torch.sin(phase), torch.cos(phase)], dim=-1) / math.sqrt(math.pi)
