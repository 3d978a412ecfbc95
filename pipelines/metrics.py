"""The competition metric and the loss, on class-probability arrays: one definition for every stage."""
from __future__ import annotations

import numpy as np


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose most probable class is the label."""
    return float((probs.argmax(1) == labels).mean())


def log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-probability of the true class (probabilities clipped at 1e-8)."""
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-8, 1)).mean())
