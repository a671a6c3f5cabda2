"""How well frozen features suit a new task before any training: LogME (You et al., ICML 2021).

For each class c, LogME treats the one-hot column y_c as a Bayesian linear regression on the features F
(n x d): weights w ~ N(0, 1/alpha), noise ~ N(0, 1/beta), so y_c ~ N(0, F F^T / alpha + I / beta). It
finds the alpha and beta that maximise that evidence by MacKay's fixed-point updates and reports the
maximum log evidence per example, averaged over classes. Higher is better; values compare candidate
models on the same data, not across data sets. Cost: one eigendecomposition of F^T F (d x d).

    >>> logme(features, labels)   # features (n, d) float, labels (n,) int
    -0.43
"""

from __future__ import annotations

import numpy as np


def logme(features: np.ndarray, labels: np.ndarray, iterations: int = 100, tolerance: float = 1e-6) -> float:
    """The LogME score of `features` (n, d) for integer `labels` (n,): mean log evidence per example."""
    f = np.asarray(features, dtype=np.float64)
    n, d = f.shape
    eigenvalues, eigenvectors = np.linalg.eigh(f.T @ f)
    eigenvalues = np.clip(eigenvalues, 0.0, None)
    scores = []
    for c in np.unique(labels):
        y = (np.asarray(labels) == c).astype(np.float64)
        projected = eigenvectors.T @ (f.T @ y)  # F^T y in the eigenbasis
        alpha, beta = 1.0, 1.0
        for _ in range(iterations):
            gamma = float(np.sum(beta * eigenvalues / (alpha + beta * eigenvalues)))
            mean = eigenvectors @ (beta * projected / (alpha + beta * eigenvalues))  # posterior mean of w
            weight_norm = float(mean @ mean)
            residual = float(np.sum((y - f @ mean) ** 2))
            new_alpha, new_beta = gamma / max(weight_norm, 1e-300), (n - gamma) / max(residual, 1e-300)
            converged = abs(new_alpha / new_beta - alpha / beta) <= tolerance * (alpha / beta)
            alpha, beta = new_alpha, new_beta
            if converged:
                break
        mean = eigenvectors @ (beta * projected / (alpha + beta * eigenvalues))
        weight_norm, residual = float(mean @ mean), float(np.sum((y - f @ mean) ** 2))
        evidence = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - 0.5 * np.sum(np.log(alpha + beta * eigenvalues))
                    - beta / 2 * residual - alpha / 2 * weight_norm - n / 2 * np.log(2 * np.pi))
        scores.append(evidence / n)
    return float(np.mean(scores))
