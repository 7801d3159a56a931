"""The four fidelity mechanisms, one module each, as inserted by :mod:`mfwrap.surgery`.

E :class:`FidelityEmbedding` (``X_Z + X_f``), C :class:`FidelityComposition` (per-fidelity
element energies), M :class:`FidelityLinear` (``W a + W_F onehot(f) + b``), R
:class:`FidelityReadout` (one readout copy per fidelity; or :class:`ResidualFidelityReadout`, a shared
readout plus a residual per fidelity). Each reads the per-row fidelity of
the batch from the wrapper's :class:`~mfwrap.fidelity.FidelityContext`, is the identity change
at initialisation, and has ``add_fidelity(like)``; E, M and R have ``draw_at_random()`` (the start a
from-scratch implementation would have, for :meth:`mfwrap.MultiFidelity.draw_fidelity_parameters`).
"""

from mfwrap.mechanisms.composition import FidelityComposition
from mfwrap.mechanisms.embedding import FidelityEmbedding
from mfwrap.mechanisms.linear import FidelityLinear
from mfwrap.mechanisms.readout import FidelityReadout, ResidualFidelityReadout

__all__ = ["FidelityComposition", "FidelityEmbedding", "FidelityLinear", "FidelityReadout", "ResidualFidelityReadout"]
