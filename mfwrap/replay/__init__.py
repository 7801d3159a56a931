"""Pseudo-label replay: a frozen foundation model labels replay structures as its own (origin) fidelity,
so that a model gaining a fidelity keeps what the foundation model knew without its training set.

- :mod:`mfwrap.replay.structures`: where replay structures come from (the user's own, perturbed; the
  AFLOW prototypes' replay part; a file), :class:`ReplayConfig`, :func:`known_elements`.
- :mod:`mfwrap.replay.labels`: :func:`pseudo_label`, the model's predictions as labels.
- :mod:`mfwrap.replay.cache`: :func:`build_replay`, all of it once, cached on disk with provenance.
"""

from mfwrap.replay.cache import build_replay
from mfwrap.replay.labels import pseudo_label
from mfwrap.replay.structures import ReplayConfig, known_elements, replay_structures

__all__ = ["ReplayConfig", "build_replay", "known_elements", "pseudo_label", "replay_structures"]
