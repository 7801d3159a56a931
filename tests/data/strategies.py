"""Hypothesis strategies for random structures shared by the data tests (and test_physics)."""

from __future__ import annotations

import numpy as np
from ase import Atoms
from hypothesis import assume
from hypothesis import strategies as st


@st.composite
def random_cells(draw, min_length: float = 0.8, max_length: float = 12.0) -> np.ndarray:
    """A triclinic cell (rows) with lengths in [min_length, max_length] Å, not nearly flat."""
    lengths = np.array([draw(st.floats(min_length, max_length)) for _ in range(3)])
    tilt = np.array([[draw(st.floats(-0.6, 0.6)) for _ in range(3)] for _ in range(3)])
    directions = np.eye(3) + tilt
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    cell = directions * lengths[:, None]
    assume(abs(np.linalg.det(directions)) > 0.3)
    return cell


@st.composite
def random_atoms(draw, max_atoms: int = 12, pbc=None, min_length: float = 0.8, max_length: float = 12.0) -> Atoms:
    """Random species (Li, O, P, Fe), positions partly outside the cell (to exercise wrapping)."""
    n = draw(st.integers(1, max_atoms))
    cell = draw(random_cells(min_length=min_length, max_length=max_length))
    if pbc is None:
        pbc = tuple(draw(st.booleans()) for _ in range(3))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    frac = rng.uniform(-0.5, 1.5, size=(n, 3))
    numbers = rng.choice([3, 8, 15, 26], size=n)
    return Atoms(numbers=numbers, scaled_positions=None, positions=frac @ cell, cell=cell, pbc=pbc)
