"""GET / on the HTTP port: one plain HTML page (no script) with every model, version and state, each served
version's parity certificate and BN provenance, and each BN layer's shift over the last windows drawn against
its alarm threshold (inline SVG)."""

from __future__ import annotations

import html
import math

from bnserve.server.dataplane import DataPlane

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 20px; } h2 { font-size: 17px; margin-top: 28px; } h3 { font-size: 15px; }
table { border-collapse: collapse; margin: 6px 0 12px; } td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
th { background: #f3f3f3; } .ok { color: #1a7f37; font-weight: 600; } .bad { color: #c62828; font-weight: 600; }
.muted { color: #777; } svg { background: #fafafa; border: 1px solid #ddd; }
"""
CHART_WIDTH, CHART_HEIGHT = 260, 60


def escape(value) -> str:
    return html.escape(str(value))


def chart(history: list[float], threshold: float) -> str:
    """The shifts of the last windows (a polyline) under a dashed threshold line, on a log scale from threshold/100
    to the larger of 10 x threshold and the largest shift: clean windows sit well below the line, shifts far above.
    An infinite shift (a channel whose live variance is 0) is drawn at the top; a NaN is not drawn."""
    history = [v for v in history if not math.isnan(v)]
    scale = [v for v in history if math.isfinite(v)]
    finite = math.isfinite(threshold) and threshold > 0
    bottom = threshold / 100 if finite else max(min([v for v in scale if v > 0] or [1e-6]), 1e-12)
    top = max([threshold * 10 if finite else bottom * 1e3, *scale])
    span = math.log10(top / bottom) or 1.0

    def y(value: float) -> float:
        position = math.log10(max(min(value, top), bottom) / bottom) / span
        return CHART_HEIGHT - 4 - (CHART_HEIGHT - 8) * min(position, 1.0)

    parts = [
        f'<svg width="{CHART_WIDTH}" height="{CHART_HEIGHT}" role="img" '
        f'aria-label="shift over the last {len(history)} windows against threshold {threshold:.3g} (log scale)">'
    ]
    if finite:
        parts.append(
            f'<line class="threshold" x1="0" x2="{CHART_WIDTH}" y1="{y(threshold):.1f}" y2="{y(threshold):.1f}" '
            'stroke="#c62828" stroke-dasharray="4 3"/>'
        )
    if history:
        step = (CHART_WIDTH - 8) / max(len(history) - 1, 1)
        points = " ".join(f"{4 + i * step:.1f},{y(v):.1f}" for i, v in enumerate(history))
        parts.append(
            f'<polyline class="shift" points="{points}" fill="none" stroke="#1f5fbf" stroke-width="1.5"/>'
        )
        for i, v in enumerate(history):
            color = "#c62828" if finite and v > threshold else "#1f5fbf"
            parts.append(f'<circle cx="{4 + i * step:.1f}" cy="{y(v):.1f}" r="2" fill="{color}"/>')
    parts.append("</svg>")
    return "".join(parts)


def version_section(dataplane: DataPlane, model) -> str:
    manifest = model.manifest
    bn = manifest.batch_normalization
    parity = manifest.parity or {}
    golden = model.golden
    rows = [
        ("backend", f"{model.backend.platform} on {model.backend.device}"),
        (
            "held-out accuracy",
            ", ".join(f"{k} {v:.4f}" for k, v in manifest.heldout_accuracy.items())
            or "not measured (exported without labels)",
        ),
        (
            "BN statistics",
            f"{bn.statistics} (decay {'n/a' if bn.decay is None else f'{bn.decay:g}'}, warm-up "
            f"{'on' if bn.warmup else 'off'}, "
            f"{'unrecorded' if bn.ema_updates is None else bn.ema_updates} EMA updates, eps "
            f"{'n/a' if bn.epsilon is None else f'{bn.epsilon:g}'}); folded: {', '.join(bn.folded)}"
            + (f"; multiply-add: {', '.join(bn.multiply_add)}" if bn.multiply_add else ""),
        ),
        (
            "export parity",
            f"{'passed' if parity.get('passed') else 'FAILED'} at tolerance {parity.get('tolerance', '?')}",
        ),
        (
            "load-time golden check",
            "not available (exported without golden samples)"
            if golden is None
            else f"max |error| {golden.max_abs_error:.3g} within {golden.tolerance:g} on {golden.samples} samples",
        ),
    ]
    if bn.source:
        rows.append(("statistics source", ", ".join(f"{k} {v}" for k, v in bn.source.items())))
    parts = [f'<h3 id="{escape(model.name)}-{model.version}">version {model.version}</h3><table>']
    parts += [f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows]
    parts.append("</table>")
    drift = dataplane.drift(model.name, str(model.version))
    if not drift.monitored:
        parts.append(f'<p class="muted">drift monitor: {escape(drift.reason)}</p>')
        return "".join(parts)
    state = '<span class="bad">ALARM</span>' if drift.alarm else '<span class="ok">ok</span>'
    parts.append(
        f"<p>drift: {state} &middot; {drift.windows} windows of {drift.window} samples "
        f"(sample rate {drift.sample_rate:g}), {drift.samples_in_window} samples in the open window</p>"
    )
    parts.append(
        "<table><tr><th>layer</th><th>name</th><th>last shift</th><th>threshold</th>"
        "<th>last windows (log scale; dashed: threshold)</th></tr>"
    )
    for layer in drift.layers:
        score = "no window yet" if layer.score is None else f"{layer.score:.4g}"
        css = "bad" if layer.alarm else ""
        parts.append(
            f'<tr class="layer"><td>{layer.layer}</td><td>{escape(layer.name)}</td>'
            f'<td class="{css}">{escape(score)}</td><td>{layer.threshold:.4g}</td>'
            f"<td>{chart(list(layer.history), layer.threshold)}</td></tr>"
        )
    parts.append("</table>")
    return "".join(parts)


def render(dataplane: DataPlane) -> str:
    name, version, _ = dataplane.server_metadata()
    ready = dataplane.server_ready()
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>bnserve status</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{escape(name)} {escape(version)}: "
        f"{'<span class=ok>ready</span>' if ready else '<span class=bad>not ready</span>'}</h1>",
    ]
    states = dataplane.index()
    models = sorted({s.name for s in states})
    if not models:
        parts.append("<p>The repository holds no model.</p>")
    for model_name in models:
        parts.append(
            f"<h2>{escape(model_name)}</h2><table><tr><th>version</th><th>state</th><th>reason</th></tr>"
        )
        for s in (s for s in states if s.name == model_name):
            css = "ok" if s.state == "READY" else "bad"
            parts.append(
                f'<tr><td>{escape(s.version or "")}</td><td class="{css}">{escape(s.state)}</td>'
                f"<td>{escape(s.reason)}</td></tr>"
            )
        parts.append("</table>")
        for served in dataplane.served(model_name):
            parts.append(version_section(dataplane, served))
    parts.append("</body></html>")
    return "".join(parts)
