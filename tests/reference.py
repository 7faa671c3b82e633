"""NumPy oracles shared by the trainer and exporter tests (float64, written from the formulas)."""

from __future__ import annotations

import numpy as np


def batch_norm_inference(x, mean, variance, gamma, beta, epsilon):
    """y = gamma * (x - mean) / sqrt(variance + epsilon) + beta, per channel (last axis)."""
    x = np.asarray(x, np.float64)
    return (
        np.asarray(gamma, np.float64)
        * (x - mean)
        / np.sqrt(np.asarray(variance, np.float64) + epsilon)
        + beta
    )


def batch_moments(x):
    """Per-channel mean and biased variance over every axis but the last."""
    x = np.asarray(x, np.float64)
    axes = tuple(range(x.ndim - 1))
    return x.mean(axis=axes), x.var(axis=axes)


def ema_decay(decay: float, num_updates: int | None) -> float:
    """tf.train.ExponentialMovingAverage's decay: min(decay, (1 + n) / (10 + n)) when n is given."""
    return decay if num_updates is None else min(decay, (1.0 + num_updates) / (10.0 + num_updates))


def ema_update(shadow, value, decay: float):
    """shadow = decay * shadow + (1 - decay) * value."""
    return decay * np.asarray(shadow, np.float64) + (1.0 - decay) * np.asarray(value, np.float64)
