"""Folding inference-form batch normalisation into the preceding convolution (pure NumPy)."""

from __future__ import annotations

import numpy as np


def bn_scale_shift(
    mean, variance, epsilon: float, gamma=None, beta=None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (s, t) with BN(x) = s * x + t in inference form.

        s_c = gamma_c / sqrt(var_c + eps)        (gamma_c = 1 when absent)
        t_c = beta_c - mean_c * s_c              (beta_c = 0 when absent)

    Computed in float64; a BN that follows no conv becomes exactly this multiply-add.
    """
    mean = np.asarray(mean, np.float64)
    variance = np.asarray(variance, np.float64)
    if mean.ndim != 1 or variance.shape != mean.shape:
        raise ValueError(
            f"mean and variance must be vectors of one length, got {mean.shape} and {variance.shape}"
        )
    if epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    if np.any(variance < 0):
        raise ValueError("variance must be >= 0")
    gamma = np.ones_like(mean) if gamma is None else np.asarray(gamma, np.float64)
    beta = np.zeros_like(mean) if beta is None else np.asarray(beta, np.float64)
    scale = gamma / np.sqrt(variance + epsilon)
    return scale, beta - mean * scale


def fold_conv_bn(
    kernel, bias, mean, variance, epsilon: float, gamma=None, beta=None
) -> tuple[np.ndarray, np.ndarray]:
    """Fold BN into the conv before it; returns (W', b') as float32.

    ``kernel`` is TensorFlow's HWIO layout [kh, kw, in, out] (out-channels last); ``bias`` is [out]
    or None (a conv without bias). Per output channel c, with s_c = gamma_c / sqrt(var_c + eps):

        W'[..., c] = W[..., c] * s_c
        b'_c       = beta_c + (b_c - mean_c) * s_c          (b_c = 0 without bias)
    """
    kernel = np.asarray(kernel, np.float64)
    if kernel.ndim != 4:
        raise ValueError(f"kernel must be HWIO [kh, kw, in, out], got shape {kernel.shape}")
    channels = kernel.shape[-1]
    bias = np.zeros(channels) if bias is None else np.asarray(bias, np.float64)
    if bias.shape != (channels,) or np.shape(mean) != (channels,):
        raise ValueError(
            f"bias and BN statistics need {channels} channels (the kernel's last axis)"
        )
    scale, shift = bn_scale_shift(mean, variance, epsilon, gamma, beta)
    return (kernel * scale).astype(np.float32), (bias * scale + shift).astype(np.float32)
