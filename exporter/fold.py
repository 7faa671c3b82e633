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


OUTPUT_AXIS_LAST = "last"
"""Conv1D/2D/3D (grouped too), Dense, a SeparableConv's pointwise kernel: out-channels on the last axis."""
OUTPUT_AXIS_TRANSPOSED = "transposed"
"""Conv1D/2D/3DTranspose: kernel [..., out, in], out-channels on the second-to-last axis."""
OUTPUT_AXIS_DEPTHWISE = "depthwise"
"""DepthwiseConv1D/2D: kernel [..., in, multiplier]; output channel c * multiplier + m comes from kernel
[..., c, m], so the per-output-channel scale is reshaped to [in, multiplier]."""


def fold_into_producer(
    kernel, bias, scale, shift, layout: str = OUTPUT_AXIS_LAST
) -> tuple[np.ndarray, np.ndarray]:
    """Fold a BN y = s * z + t (per output channel) into the linear layer z = W * x + b before it.

    Every layer here is linear in x with output channel c depending on the kernel entries of channel c
    only, so with the kernel entries of channel c scaled:

        W'[c] = s_c * W[c]                     (W[c]: the entries that make output channel c)
        b'_c  = s_c * b_c + t_c                (b_c = 0 for a layer without bias)

    gives W' * x + b' = s * (W * x + b) + t exactly, in real arithmetic. ``layout`` says where the
    output channel lives in the kernel (OUTPUT_AXIS_LAST, OUTPUT_AXIS_TRANSPOSED, OUTPUT_AXIS_DEPTHWISE).
    Returns float32 arrays; the products are taken in float64.
    """
    kernel = np.asarray(kernel, np.float64)
    scale = np.asarray(scale, np.float64)
    channels = scale.shape[0]
    if layout == OUTPUT_AXIS_LAST:
        broadcast = scale
    elif layout == OUTPUT_AXIS_TRANSPOSED:
        broadcast = scale[:, None]
    elif layout == OUTPUT_AXIS_DEPTHWISE:
        inputs, multiplier = kernel.shape[-2], kernel.shape[-1]
        if inputs * multiplier != channels:
            raise ValueError(
                f"a depthwise kernel {kernel.shape} makes {inputs * multiplier} channels, the BN has {channels}"
            )
        broadcast = scale.reshape(inputs, multiplier)
    else:
        raise ValueError(f"unknown kernel layout {layout!r}")
    produced = {OUTPUT_AXIS_LAST: kernel.shape[-1], OUTPUT_AXIS_TRANSPOSED: kernel.shape[-2]}.get(
        layout, channels
    )
    if produced != channels:
        raise ValueError(
            f"a kernel {kernel.shape} makes {produced} channels, the BN has {channels}"
        )
    bias = np.zeros(channels) if bias is None else np.asarray(bias, np.float64)
    if bias.shape != (channels,):
        raise ValueError(f"bias {bias.shape} for {channels} channels")
    folded_kernel = kernel * broadcast
    folded_bias = scale * bias + np.asarray(shift, np.float64)
    return folded_kernel.astype(np.float32), folded_bias.astype(np.float32)


def fold_into_next_dense(kernel, bias, scale, shift) -> tuple[np.ndarray, np.ndarray]:
    """Fold a BN z = s * x + t on a Dense layer's input features into that Dense, y = z W + b:

        y = (s * x + t) W + b = x (diag(s) W) + (t W + b)
        W'[i, :] = s_i * W[i, :]               b' = b + sum_i t_i W[i, :]

    exact in real arithmetic, because every feature enters the Dense through one row of W. (A BN
    before a zero-padded convolution has no such rule: the padded border holds 0, not t, so t would
    be added where the convolution sees padding. A pure scale would still be exact there, an offset is
    not, which is why bnserve keeps that BN as a multiply-add.)
    """
    kernel = np.asarray(kernel, np.float64)
    scale = np.asarray(scale, np.float64)
    shift = np.asarray(shift, np.float64)
    if kernel.ndim != 2 or kernel.shape[0] != scale.shape[0]:
        raise ValueError(f"a Dense kernel {kernel.shape} after a BN of {scale.shape[0]} features")
    bias = np.zeros(kernel.shape[1]) if bias is None else np.asarray(bias, np.float64)
    return (kernel * scale[:, None]).astype(np.float32), (bias + shift @ kernel).astype(np.float32)
