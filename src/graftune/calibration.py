"""How far a classifier's confidence can be trusted: the reliability diagram's bins and the expected
calibration error (ECE).

The confidence of a prediction is the probability of the predicted class. Predictions are put in `bins`
equal-width bins of confidence, (0, 1/bins], (1/bins, 2/bins], ... (a confidence of exactly 0 joins the
first); ECE is the mean over bins of |accuracy - mean confidence|, weighted by the share of predictions
in the bin (Guo et al. 2017; torchmetrics' `calibration_error` with norm="l1" computes the same).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Reliability:
    """Per bin: its edges, how many predictions fell in it, their accuracy and mean confidence (NaN when
    empty); and the expected calibration error over all of them."""

    edges: list[float]
    counts: list[int]
    accuracy: list[float]
    confidence: list[float]
    ece: float


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> Reliability:
    """Bin predictions by confidence (see the module docstring); `correct` is 1 where the prediction was right."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    counts, accuracy, mean_confidence = [], [], []
    ece = 0.0
    for b in range(bins):
        inside = index == b
        n = int(inside.sum())
        counts.append(n)
        if n == 0:
            accuracy.append(float("nan"))
            mean_confidence.append(float("nan"))
            continue
        acc, conf = float(correct[inside].mean()), float(confidence[inside].mean())
        accuracy.append(acc)
        mean_confidence.append(conf)
        ece += n / len(confidence) * abs(acc - conf)
    return Reliability([float(e) for e in edges], counts, accuracy, mean_confidence, ece)
