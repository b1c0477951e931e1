"""Comparing runs: which settings differ, overlaid curves, and stability across seeds.

``configs`` are the runs' resolved ``config.yaml`` as nested dicts; ``metrics`` the tables of
``core.runs.read_metrics``. Runs whose configs agree on everything except the seed (and the run's own
name and folder) form one *configuration*; with several seeds a figure shows their mean ± one standard
deviation.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.figures.style import apply_style, faint, message_figure, palette
from core.figures.training import ema, train_rows, val_rows

# Keys that name or place a run rather than configure it.
IDENTITY_KEYS = ("run.name", "run.dir", "run.root")
SEED_KEY = "training.seed"
# Quantities drawn on a log axis by default: positive and spanning decades. Everything else (cos_similarity,
# lambda_t, lr schedules near 0) is linear, where negative or zero values stay visible.
LOG_BY_DEFAULT = ("loss", "dist_loss", "val_loss", "val_dist_loss", "grad_norm")


def flatten(config: dict, prefix: str = "") -> dict:
    """{"model": {"kwargs": {"use_mhc": True}}} -> {"model.kwargs.use_mhc": True}."""
    flat = {}
    for key, value in (config or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = tuple(value) if isinstance(value, list) else value
    return flat


def _differing(flat: dict[str, dict], ignore=IDENTITY_KEYS) -> list[str]:
    keys = sorted({k for f in flat.values() for k in f} - set(ignore))
    return [k for k in keys if len({repr(f.get(k)) for f in flat.values()}) > 1]


def config_diff(configs: dict[str, dict]) -> pd.DataFrame:
    """One row per run, one column per config key whose value differs between the runs."""
    flat = {name: flatten(c) for name, c in configs.items()}
    keys = _differing(flat)
    table = pd.DataFrame({k: [_show(flat[n].get(k)) for n in flat] for k in keys}, index=list(flat))
    table.index.name = "run"
    return table


def _show(value) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return "—" if value is None else str(value)


def group_by_configuration(configs: dict[str, dict]) -> dict[str, list[str]]:
    """Runs that differ only by seed, under a label made of the keys that set the groups apart."""
    flat = {name: flatten(c) for name, c in configs.items()}
    keys = _differing(flat, ignore=IDENTITY_KEYS + (SEED_KEY,))
    groups: dict[str, list[str]] = {}
    for name, f in flat.items():
        label = ", ".join(f"{k.rsplit('.', 1)[-1]}={_show(f.get(k))}" for k in keys) or "same configuration"
        groups.setdefault(label, []).append(name)
    return groups


def overlaid_curves(metrics: dict[str, pd.DataFrame], column: str = "loss", smoothing: float = 0.9,
                    log_y: bool = False, y_title: str | None = None) -> go.Figure:
    """One smoothed curve per run (raw faint behind it); validation columns are drawn as lines+markers."""
    is_val = column.startswith("val_")
    fig = go.Figure()
    drawn = 0
    colours = palette(len(metrics))
    for i, (name, table) in enumerate(metrics.items()):
        rows = val_rows(table) if is_val else train_rows(table)
        if column not in rows or rows[column].notna().sum() == 0:
            continue
        colour = colours[i]
        if is_val:
            fig.add_trace(go.Scatter(x=rows["step"], y=rows[column], mode="lines+markers", name=name,
                                     line=dict(color=colour, width=2)))
        else:
            fig.add_trace(go.Scatter(x=rows["step"], y=rows[column], mode="lines", showlegend=False,
                                     line=dict(color=faint(colour, 0.2), width=1), hoverinfo="skip"))
            fig.add_trace(go.Scatter(x=rows["step"], y=ema(rows[column], smoothing), mode="lines", name=name,
                                     line=dict(color=colour, width=2)))
        drawn += 1
    if not drawn:
        return message_figure(f"None of the selected runs logged '{column}'.", title=column)
    fig.update_xaxes(title_text="training step")
    fig.update_yaxes(title_text=y_title or f"{column} (a.u.)", type="log" if log_y else "linear")
    return apply_style(fig, title=f"{column} per run" + (" (smoothed)" if not is_val else ""))


def _aligned(tables: list[pd.DataFrame], column: str, smoothing: float) -> pd.DataFrame:
    """Smoothed ``column`` of each seed on the steps all seeds share: [steps, seeds]."""
    series = []
    for table in tables:
        rows = train_rows(table)
        if column in rows and rows[column].notna().any():
            series.append(pd.Series(ema(rows[column], smoothing), index=rows["step"].to_numpy()))
    if not series:
        return pd.DataFrame()
    return pd.concat(series, axis=1, join="inner").sort_index()


def seed_band_curves(metrics: dict[str, pd.DataFrame], groups: dict[str, list[str]], column: str = "loss",
                     smoothing: float = 0.9, log_y: bool = False) -> go.Figure:
    """Per configuration: mean over seeds of the smoothed curve, with a ± one standard deviation band."""
    fig = go.Figure()
    colours = palette(len(groups))
    for i, (label, names) in enumerate(groups.items()):
        aligned = _aligned([metrics[n] for n in names if n in metrics], column, smoothing)
        if aligned.empty:
            continue
        colour = colours[i]
        mean, spread = aligned.mean(axis=1), aligned.std(axis=1, ddof=1).fillna(0.0)
        steps = aligned.index.to_numpy()
        fig.add_trace(go.Scatter(x=np.concatenate([steps, steps[::-1]]),
                                 y=np.concatenate([(mean + spread).to_numpy(),
                                                   (mean - spread).to_numpy()[::-1]]),
                                 fill="toself", fillcolor=faint(colour, 0.2), line=dict(width=0),
                                 name=f"{label} ± s.d.", hoverinfo="skip", showlegend=False))
        seeds = aligned.shape[1]
        fig.add_trace(go.Scatter(x=steps, y=mean, mode="lines", line=dict(color=colour, width=2),
                                 name=f"{label} (n={seeds} seed{'s' if seeds > 1 else ''})"))
    if not fig.data:
        return message_figure(f"No run logged '{column}'.", title=column)
    fig.update_xaxes(title_text="training step")
    fig.update_yaxes(title_text=f"{column} (a.u.), mean ± s.d. over seeds", type="log" if log_y else "linear")
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.2, x=0))
    return apply_style(fig, title=f"{column}: mean ± s.d. across seeds per configuration", height=480)


def stability_figure(stability: pd.DataFrame, groups: dict[str, list[str]]) -> go.Figure:
    """Gradient-norm spread and loss-spike count per configuration: seeds as dots, mean ± s.d. as bars.

    ``stability`` has one row per run (index = run name) with ``grad_norm_p50``, ``grad_norm_p95`` and
    ``loss_spikes`` (``core.evaluation.stability_summary``: spikes are steps whose loss exceeds three times
    the running median).
    """
    needed = {"grad_norm_p95", "loss_spikes"}
    if stability is None or stability.empty or not needed <= set(stability.columns):
        return message_figure("No stability summary for these runs yet.", title="Training stability")
    fig = make_subplots(rows=1, cols=2, subplot_titles=["gradient norm, 95th percentile",
                                                        "loss spikes (> 3 × running median)"])
    labels = list(groups)
    for panel, column in ((1, "grad_norm_p95"), (2, "loss_spikes")):
        for i, label in enumerate(labels):
            values = stability.loc[[n for n in groups[label] if n in stability.index], column].astype(float)
            if values.empty:
                continue
            colour = palette(len(labels))[i]
            spread = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            fig.add_trace(go.Bar(x=[label], y=[values.mean()], marker_color=faint(colour, 0.5),
                                 error_y=dict(type="data", array=[spread], visible=len(values) > 1),
                                 name=label, legendgroup=label, showlegend=panel == 1), row=1, col=panel)
            fig.add_trace(go.Scatter(x=[label] * len(values), y=values, mode="markers",
                                     marker=dict(color=colour, size=8, line=dict(color="black", width=0.5)),
                                     text=list(values.index),
                                     hovertemplate="%{text}: %{y:.4g}<extra></extra>",
                                     showlegend=False, legendgroup=label), row=1, col=panel)
    fig.update_yaxes(title_text="‖gradient‖₂ (a.u.)", row=1, col=1)
    fig.update_yaxes(title_text="spikes (count)", row=1, col=2)
    fig.update_xaxes(showticklabels=False)
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.08, x=0))
    return apply_style(fig, title="Training stability per configuration (dots: seeds; bars: mean ± s.d.)",
                       height=460)
