"""LogME against the evidence computed directly: log N(y; 0, F F^T / alpha + I / beta), maximised numerically."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from graftune.transferability import logme


def direct_evidence(features: np.ndarray, y: np.ndarray) -> float:
    """The maximum over alpha, beta of the log marginal likelihood of y, per example, by brute force."""
    n = len(y)

    def negative(log_params: np.ndarray) -> float:
        alpha, beta = np.exp(log_params)
        covariance = features @ features.T / alpha + np.eye(n) / beta
        _, logdet = np.linalg.slogdet(covariance)
        return 0.5 * (logdet + y @ np.linalg.solve(covariance, y) + n * np.log(2 * np.pi))

    best = min((minimize(negative, start, method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-12,
                                                                         "maxiter": 4000})
                for start in ([0.0, 0.0], [2.0, 2.0], [-2.0, 1.0])), key=lambda r: r.fun)
    return -float(best.fun) / n


def test_logme_is_the_maximum_evidence_of_each_class_averaged() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(12, 3))
    labels = np.array([0, 1, 2] * 4)
    expected = np.mean([direct_evidence(features, (labels == c).astype(float)) for c in range(3)])
    assert logme(features, labels) == pytest.approx(expected, abs=1e-4)


def test_features_that_separate_the_classes_score_higher() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 200)
    noise = rng.normal(size=(200, 16))
    separating = noise * 0.3 + np.eye(16)[labels] * 2.0
    assert logme(separating, labels) > logme(noise, labels) + 0.1
