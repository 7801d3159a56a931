"""Native CHGNet backbone: ``from backbones.chgnet import CHGNet``."""

from backbones.chgnet.model import CHGNet

__all__ = ["CHGNet"]
