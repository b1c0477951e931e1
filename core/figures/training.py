"""Training curves of one run, from the rows of ``metrics.jsonl`` (``core.runs.read_metrics``).

Train rows carry ``step, loss, dist_loss, vel_loss, cos_similarity, lambda_t, grad_norm, ...``; validation
rows carry ``split == "val"`` and ``val_loss, val_dist_loss, ...`` (see core/runs/__init__.py). Every builder
accepts the whole table, tolerates missing columns (a run without the velocity term has no ``vel_loss``)
and returns a figure that says so instead of failing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from core.figures.style import ROLE_COLOURS, apply_style, faint, message_figure, palette

LOSS_TERMS = {
    "loss": "total",
    "dist_loss": "distributional",
    "vel_loss": "velocity",
}


def ema(values, weight: float = 0.9) -> np.ndarray:
    """Bias-corrected exponential moving average (as TensorBoard draws it); NaNs are carried over.

    s_t = w s_{t-1} + (1 - w) x_t, reported as s_t / (1 - w^t) so the first points are not pulled to 0.
    """
    x = np.asarray(values, dtype=float)
    out = np.full_like(x, np.nan)
    if weight <= 0:
        return x.copy()
    s, norm = 0.0, 0.0
    for i, v in enumerate(x):
        if np.isfinite(v):
            s = weight * s + (1 - weight) * v
            norm = weight * norm + (1 - weight)
        out[i] = s / norm if norm > 0 else np.nan
    return out


def default_smoothing(n_steps: int | None) -> float:
    """The EMA weight for a run of ``n_steps``: a time constant 1/(1 - w) of about 5% of the run, so the
    smoothed curve lags by a few steps on a short run (0.9 lagged ~10 of 85) and still calms a long one.
    0 (raw) below 20 steps; at most 0.99."""
    if not n_steps or n_steps < 20:
        return 0.0
    return round(min(0.99, 1.0 - 20.0 / n_steps), 2)


def train_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    if metrics is None or metrics.empty or "step" not in metrics:
        return pd.DataFrame()
    rows = metrics[metrics["split"] == "train"] if "split" in metrics else metrics
    return rows.sort_values("step")


def val_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    if metrics is None or metrics.empty or "split" not in metrics:
        return pd.DataFrame()
    return metrics[metrics["split"] == "val"].sort_values("step")


def _has(rows: pd.DataFrame, column: str) -> bool:
    return column in rows and rows[column].notna().any()


def _raw_and_smoothed(fig, x, y, name, colour, smoothing, row=None, col=None, showlegend=True):
    """Raw values faint behind their smoothed curve, so noise and trend are both visible."""
    kw = {} if row is None else {"row": row, "col": col}
    fig.add_trace(go.Scatter(x=x, y=y, mode="lines", line=dict(color=faint(colour), width=1),
                             name=f"{name} (raw)", legendgroup=name, showlegend=False,
                             hovertemplate="step %{x}<br>%{y:.4g}<extra>" + name + " raw</extra>"), **kw)
    fig.add_trace(go.Scatter(x=x, y=ema(y, smoothing), mode="lines", line=dict(color=colour, width=2),
                             name=name, legendgroup=name, showlegend=showlegend,
                             hovertemplate="step %{x}<br>%{y:.4g}<extra>" + name + "</extra>"), **kw)


def loss_curves(metrics: pd.DataFrame, log_y: bool = False, smoothing: float = 0.9) -> go.Figure:
    """Total and component training losses per step (raw faint, smoothed solid); validation as markers."""
    rows, val = train_rows(metrics), val_rows(metrics)
    terms = [c for c in LOSS_TERMS if _has(rows, c)]
    if not terms:
        return message_figure("No training steps logged yet.", title="Loss")
    fig = go.Figure()
    for i, column in enumerate(terms):
        _raw_and_smoothed(fig, rows["step"], rows[column], f"train {LOSS_TERMS[column]}",
                          palette(len(terms))[i], smoothing)
    if _has(val, "val_loss"):
        fig.add_trace(go.Scatter(x=val["step"], y=val["val_loss"], mode="lines+markers",
                                 marker=dict(symbol="diamond", size=8), name="validation total",
                                 line=dict(color="black", dash="dot", width=1.5)))
    fig.update_xaxes(title_text="training step")
    fig.update_yaxes(title_text="loss (a.u.), log scale" if log_y else "loss (a.u.)",
                     type="log" if log_y else "linear")
    return apply_style(fig, title="Loss (raw faint, smoothed solid)")


def grad_norm_curve(metrics: pd.DataFrame, log_y: bool = True, smoothing: float = 0.9) -> go.Figure:
    rows = train_rows(metrics)
    if not _has(rows, "grad_norm"):
        return message_figure("No gradient norms logged yet.", title="Gradient norm")
    fig = go.Figure()
    _raw_and_smoothed(fig, rows["step"], rows["grad_norm"], "gradient norm", ROLE_COLOURS["train"], smoothing)
    fig.update_xaxes(title_text="training step")
    fig.update_yaxes(title_text="‖gradient‖₂ before clipping (a.u.)", type="log" if log_y else "linear")
    return apply_style(fig, title="Gradient norm")


def _velocity_absent(velocity: bool | None, what: str, title: str) -> go.Figure:
    """Why a velocity curve is empty, from the run's settings when known (not from the metrics: a run with
    velocity on has none while it prepares data, or after an early failure)."""
    if velocity:
        return message_figure(f"Velocity alignment is on; no {what} logged yet.", title=title)
    if velocity is False:
        return message_figure(f"Velocity alignment is off in this run (no {what}).", title=title)
    return message_figure(f"No {what} logged (velocity alignment off, or no steps yet).", title=title)


def lambda_curve(metrics: pd.DataFrame, velocity: bool | None = None) -> go.Figure:
    """λ_t = min(1, step / warm-up): how much of the velocity weight was switched on at each step.
    ``velocity``: whether the run's config turns velocity alignment on (None: unknown)."""
    rows = train_rows(metrics)
    if not _has(rows, "lambda_t"):
        return _velocity_absent(velocity, "λ_t", "Velocity warm-up λ_t")
    fig = go.Figure(go.Scatter(x=rows["step"], y=rows["lambda_t"], mode="lines",
                               line=dict(color=ROLE_COLOURS["v_z"], width=2), name="λ_t"))
    fig.update_xaxes(title_text="training step")
    fig.update_yaxes(title_text="λ_t (fraction of full velocity weight)", range=[-0.02, 1.05])
    return apply_style(fig, title="Velocity warm-up λ_t")


def cos_curve(metrics: pd.DataFrame, smoothing: float = 0.9, velocity: bool | None = None) -> go.Figure:
    """Mean cos(Δz, v_z) over the confident control cells of each training batch."""
    rows = train_rows(metrics)
    if not _has(rows, "cos_similarity"):
        return _velocity_absent(velocity, "cos(Δz, v_z)", "cos(Δz, v_z) during training")
    fig = go.Figure()
    _raw_and_smoothed(fig, rows["step"], rows["cos_similarity"], "cos(Δz, v_z)", ROLE_COLOURS["delta_z"],
                      smoothing)
    fig.add_hline(y=0, line=dict(color="#777777", width=1, dash="dot"))
    fig.update_xaxes(title_text="training step")
    fig.update_yaxes(title_text="cos(Δz, v_z) (−1 to 1)", range=[-1.05, 1.05])
    return apply_style(fig, title="cos(Δz, v_z) during training")


def training_figures(metrics: pd.DataFrame, log_y: bool = False, smoothing: float = 0.9,
                     velocity: bool | None = None) -> dict[str, go.Figure]:
    """Every training figure of a run, by file-safe name (used by the app, the export and the CLI).
    ``velocity``: the run's ``model.kwargs.use_velocity_alignment`` (None: unknown)."""
    return {
        "loss": loss_curves(metrics, log_y=log_y, smoothing=smoothing),
        "grad_norm": grad_norm_curve(metrics, smoothing=smoothing),
        "lambda_t": lambda_curve(metrics, velocity=velocity),
        "cos_delta_z_v_z": cos_curve(metrics, smoothing=smoothing, velocity=velocity),
    }
