"""mfwrap: multi-fidelity machine-learning interatomic potentials by module surgery on PyG models."""

from mfwrap.predict import predict

__all__ = ["predict"]
__version__ = "0.1.0"
