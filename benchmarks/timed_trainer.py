"""A Trainer that also sums the wall time of its optimiser steps (shared by the head-to-head scripts)."""

from __future__ import annotations

import time

from mfwrap.train import Trainer


class TimedTrainer(Trainer):
    """:class:`mfwrap.train.Trainer` plus ``step_seconds``, the summed wall time of its optimiser steps."""

    step_seconds = 0.0

    def train_step(self, graphs, indices):
        start = time.perf_counter()
        loss = super().train_step(graphs, indices)
        self.step_seconds += time.perf_counter() - start
        return loss
