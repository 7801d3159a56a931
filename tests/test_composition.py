"""Least-squares composition fit: recovers exact weights, respects priors, handles collinearity."""

import numpy as np
import torch
from torch_geometric.data import Data

from mfwrap.data import keys as K
from mfwrap.mechanisms.composition_fit import element_counts, fit_linear_composition


def _graph(numbers, energy, labelled=True):
    return Data(
        atomic_numbers=torch.tensor(numbers),
        energy=torch.tensor([energy], dtype=torch.float32),
        energy_mask=torch.tensor([labelled]),
    )


def test_recovers_weights_and_keeps_prior_for_absent_elements():
    rng = np.random.default_rng(0)
    true = {3: -1.9, 8: -4.9, 26: -8.3}
    graphs = []
    for _ in range(12):
        numbers = rng.choice(list(true), size=rng.integers(3, 9))
        graphs.append(_graph(numbers, sum(true[int(z)] for z in numbers)))
    graphs.append(_graph([3, 3], 1e6, labelled=False))  # unlabelled: must be ignored
    prior = torch.zeros(95, dtype=torch.float64)
    prior[15] = -5.4
    weights = fit_linear_composition(graphs, prior=prior)
    for z, w in true.items():
        assert abs(float(weights[z]) - w) < 1e-5
    assert float(weights[15]) == -5.4 and float(weights[1]) == 0.0


def test_collinear_elements_predict_energies_exactly():
    # P and O always 1:4: individual weights are not identifiable, predictions are.
    graphs = [_graph([3] * k + [15] * 2 + [8] * 8, -2.0 * k - 2 * 5.0 - 8 * 6.0) for k in range(1, 5)]
    weights = fit_linear_composition(graphs).numpy()
    predicted = element_counts(graphs) @ weights
    assert np.allclose(predicted, [float(g[K.ENERGY]) for g in graphs], atol=1e-4)
    assert np.isfinite(weights).all()


def test_no_labels_is_a_clear_error():
    try:
        fit_linear_composition([_graph([1], 0.0, labelled=False)])
    except ValueError as error:
        assert "no structure has an energy label" in str(error)
    else:
        raise AssertionError("expected ValueError")
