"""Training: masked multi-target loss, trainer (checkpoints, resume, DDP), baselines."""

from mfwrap.mechanisms.composition_fit import fit_composition
from mfwrap.train.config import TrainConfig
from mfwrap.train.loss import LossWeights, MultiTargetLoss
from mfwrap.train.metrics import ErrorAccumulator, format_table
from mfwrap.train.trainer import Trainer

__all__ = [
    "TrainConfig",
    "LossWeights",
    "MultiTargetLoss",
    "ErrorAccumulator",
    "format_table",
    "Trainer",
    "fit_composition",
]
