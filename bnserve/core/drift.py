"""Frozen statistics under drift: the shift score of live BN moments against the frozen ones (NumPy only).

Layer l's monitor output (monitor.onnx) is, per sample and channel c, the mean and the mean of squares over
H x W of that layer's folded output y. Folding makes y an affine function of the BN input z:

    y_c = s_c * z_c + t_c,     s_c = gamma_c / sqrt(V_c + eps),     t_c = beta_c - M_c * s_c

(t_c = b'_c - s_c * b_c: the folded bias less the conv's own bias, so t_c = b'_c for a conv without bias).
Layer 0 is the input standardisation, y = x / std + (-mean / std): s = 1/std, t = -mean/std, and the
"frozen" statistics are the training data's mean and variance (M = mean, V = std^2, eps = 0).

Over a window of W samples, with Ybar_c and Y2bar_c the means of the per-sample values,

    m_c = (Ybar_c - t_c) / s_c                 live mean of z
    v_c = (Y2bar_c - Ybar_c^2) / s_c^2         live (biased) variance of z over N, H, W

and the layer's shift is the mean over channels of

    KL( N(m_c, v_c + eps) || N(M_c, V_c + eps) )
        = 0.5 * ( (v_c + eps) / (V_c + eps) + (m_c - M_c)^2 / (V_c + eps) - 1 - ln((v_c + eps) / (V_c + eps)) )

(eps is the layer's own BN epsilon: BN normalises with V + eps, and it keeps a channel whose live variance is
0 finite). A channel with s_c = 0 (gamma_c = 0) carries no information about z: its output is the constant
t_c whatever arrives, so it is left out of the mean; a layer with no informative channel scores 0.

Alarm thresholds are calibrated at export on clean windows: windows of W samples drawn with replacement from
the held-out set, threshold = margin x the ``quantile`` of those windows' scores, per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MONITOR_MODEL = "monitor.onnx"
DEFAULT_WINDOW = 256
DEFAULT_MARGIN = 2.0
DEFAULT_QUANTILE = 0.99
CLEAN_WINDOWS = 400
GAMMA_ZERO = 1e-12
"""|s_c| at or below this counts as gamma = 0 (the channel is constant)."""


def output_names(layer: int) -> tuple[str, str]:
    """monitor.onnx's two outputs for ``layer``: per-sample, per-channel mean and mean of squares of y."""
    return f"layer{layer}_mean", f"layer{layer}_mean_square"


@dataclass(frozen=True)
class MonitoredLayer:
    """What the score of one layer needs, recorded in the manifest."""

    name: str
    """"input" for layer 0, else the folded block ("conv0+bn0")."""
    scale: tuple[float, ...]
    """s_c"""
    shift: tuple[float, ...]
    """t_c"""
    mean: tuple[float, ...]
    """M_c, the frozen mean"""
    variance: tuple[float, ...]
    """V_c, the frozen variance"""
    epsilon: float
    threshold: float = float("inf")

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "scale": list(self.scale),
            "shift": list(self.shift),
            "mean": list(self.mean),
            "variance": list(self.variance),
            "epsilon": self.epsilon,
            "threshold": self.threshold,
        }

    @classmethod
    def from_json(cls, data: dict) -> "MonitoredLayer":
        return cls(
            str(data["name"]),
            *(tuple(float(v) for v in data[key]) for key in ("scale", "shift", "mean", "variance")),
            float(data["epsilon"]),
            float(data["threshold"]),
        )


def layer_shift(mean_y: np.ndarray, mean_square_y: np.ndarray, layer: MonitoredLayer) -> float:
    """The shift of one layer from the window means Ybar (``mean_y``) and Y2bar (``mean_square_y``), per channel."""
    return float(layer_shifts(mean_y, mean_square_y, layer))


def layer_shifts(
    mean_y: np.ndarray, mean_square_y: np.ndarray, layer: MonitoredLayer
) -> np.ndarray:
    """layer_shift for many windows at once: ``mean_y`` and ``mean_square_y`` are [..., C], the result [...]."""
    scale = np.asarray(layer.scale, np.float64)
    informative = np.abs(scale) > GAMMA_ZERO
    mean_y = np.asarray(mean_y, np.float64)
    if not informative.any():
        return np.zeros(mean_y.shape[:-1])
    scale = scale[informative]
    mean_y = mean_y[..., informative]
    mean_square_y = np.asarray(mean_square_y, np.float64)[..., informative]
    live_mean = (mean_y - np.asarray(layer.shift, np.float64)[informative]) / scale
    live_variance = np.maximum(mean_square_y - mean_y**2, 0.0) / scale**2
    frozen_mean = np.asarray(layer.mean, np.float64)[informative]
    frozen_variance = np.asarray(layer.variance, np.float64)[informative] + layer.epsilon
    ratio = (live_variance + layer.epsilon) / frozen_variance
    kl = 0.5 * (ratio + (live_mean - frozen_mean) ** 2 / frozen_variance - 1.0 - np.log(ratio))
    return np.mean(kl, axis=-1)


def window_shifts(moments: dict[str, np.ndarray], layers: list[MonitoredLayer]) -> list[float]:
    """Each layer's shift over a window, from monitor.onnx's per-sample outputs ``moments`` (name -> [W, C])."""
    shifts = []
    for index, layer in enumerate(layers):
        mean_name, square_name = output_names(index)
        shifts.append(
            layer_shift(
                moments[mean_name].mean(axis=0, dtype=np.float64),
                moments[square_name].mean(axis=0, dtype=np.float64),
                layer,
            )
        )
    return shifts


def calibrate_thresholds(
    moments: dict[str, np.ndarray],
    layers: list[MonitoredLayer],
    window: int = DEFAULT_WINDOW,
    windows: int = CLEAN_WINDOWS,
    quantile: float = DEFAULT_QUANTILE,
    margin: float = DEFAULT_MARGIN,
    seed: int = 0,
) -> tuple[list[MonitoredLayer], np.ndarray]:
    """Thresholds from ``windows`` clean windows of ``window`` samples drawn with replacement from ``moments``
    (per-sample monitor outputs of clean data): margin x quantile of each layer's scores. Returns the layers with
    their thresholds and the clean scores [windows, layers]."""
    samples = len(next(iter(moments.values())))
    rng = np.random.default_rng(seed)
    # Window w's mean of any output is counts[w] @ values / window, where counts[w, i] is how often
    # sample i was drawn: one matrix product per output instead of a gather per window and output.
    counts = np.zeros((windows, samples))
    for row in range(windows):
        np.add.at(counts[row], rng.integers(0, samples, window), 1.0)
    counts /= window
    scores = np.empty((windows, len(layers)))
    for index, layer in enumerate(layers):
        mean_name, square_name = output_names(index)
        scores[:, index] = layer_shifts(
            counts @ moments[mean_name].astype(np.float64),
            counts @ moments[square_name].astype(np.float64),
            layer,
        )
    limits = margin * np.quantile(scores, quantile, axis=0)
    calibrated = [
        MonitoredLayer(
            layer.name,
            layer.scale,
            layer.shift,
            layer.mean,
            layer.variance,
            layer.epsilon,
            float(limit),
        )
        for layer, limit in zip(layers, limits)
    ]
    return calibrated, scores


@dataclass(frozen=True)
class MonitorSpec:
    """The manifest's "monitor" section: the file, the window, how thresholds were calibrated, every layer."""

    file: str
    window: int
    margin: float
    quantile: float
    clean_windows: int
    clean_samples: int
    layers: tuple[MonitoredLayer, ...]

    def to_json(self) -> dict:
        return {
            "file": self.file,
            "window": self.window,
            "margin": self.margin,
            "quantile": self.quantile,
            "clean_windows": self.clean_windows,
            "clean_samples": self.clean_samples,
            "layers": [layer.to_json() for layer in self.layers],
        }

    @classmethod
    def from_json(cls, data: dict) -> "MonitorSpec":
        return cls(
            str(data["file"]),
            int(data["window"]),
            float(data["margin"]),
            float(data["quantile"]),
            int(data["clean_windows"]),
            int(data["clean_samples"]),
            tuple(MonitoredLayer.from_json(layer) for layer in data["layers"]),
        )
