"""Hypothesis profiles: "ci" (derandomized, so a failure in CI reproduces on every machine) when the
CI variable is set, else "dev" (random examples, more coverage over many runs). Choose one with
HYPOTHESIS_PROFILE=ci|dev. The tests' own backbone modules are registered so that model files of their classes load."""

import os

import pytest
import torch
from hypothesis import settings

import mfwrap

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))


@pytest.fixture
def fresh_dynamo():
    """torch.compile state and counters reset around a test (compile tests count graphs)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    yield counters
    torch._dynamo.reset()


# The test suites' own backbone modules, on sys.path while testing: model files of their classes load.
for _module in ("tiny_backbone", "mf_models"):
    mfwrap.register_architecture_module(_module)
