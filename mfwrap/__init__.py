"""mfwrap: multi-fidelity machine-learning interatomic potentials by module surgery on PyG models."""

from mfwrap.calculator import Calculator
from mfwrap.compile import compile_model
from mfwrap.model_file import register_architecture_module
from mfwrap.multifidelity import MultiFidelity, load, save
from mfwrap.predict import predict

__all__ = ["Calculator", "MultiFidelity", "compile_model", "load", "predict", "register_architecture_module", "save"]
__version__ = "0.1.0"
