"""mHC over training: at every saved step, how closely H_res stays doubly stochastic (``core.figures.mhc``'s
``sum_error_over_steps``), how far each mapping has moved from its init (``core.evaluation.mhc_drift.mapping_drift``),
and how large H_res's gradient is beside LoRA's (metrics.jsonl columns grad_h_res_<layer> and grad_lora).

``training_history_figure`` stacks all three on one training-step axis, which the Inspect page draws: one chart
instead of three is a third of the browser's work per chart, and one zoom on the steps moves every panel. The sum
error and the gradient ratio also have figures of their own (``python -m core figures``, the Export page, tests).
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.figures.mhc import LOG_DECADES, sum_error_traces
from core.figures.style import OKABE_ITO, apply_style, axis_ref, message_figure

MAPPING_TITLES = {"h_res": "H_res", "h_pre": "H_pre", "h_post": "H_post"}
NO_GRADIENTS = "This run logged no mHC gradients (mHC off, or a run older than this panel)."
GRADIENT_AXIS = "mean |∇ H_res logits| / mean |∇ LoRA|"


def _layer_colour(position: int) -> str:
    return OKABE_ITO[position % len(OKABE_ITO)]


def _drift_traces(drift: dict, mapping: str, show_legend: bool) -> list[go.Scatter]:
    return [go.Scatter(x=np.asarray(drift["steps"]), y=np.asarray(drift[f"max_abs_{mapping}"])[:, k],
                       mode="lines+markers", name=f"layer {int(layer)}", legendgroup=f"layer {int(layer)}",
                       showlegend=show_legend, line=dict(color=_layer_colour(k)))
            for k, layer in enumerate(drift["layer_indices"])]


def _gradient_columns(metrics) -> list[str]:
    columns = sorted((c for c in getattr(metrics, "columns", []) if c.startswith("grad_h_res_")),
                     key=lambda c: int(c.rsplit("_", 1)[1]))
    return columns if columns and "grad_lora" in metrics.columns else []


def _gradient_traces(metrics, show_legend: bool) -> list[go.Scatter]:
    columns = _gradient_columns(metrics)
    if not columns:
        return []
    train = metrics[metrics["split"].fillna("train") == "train"] if "split" in metrics.columns else metrics
    train = train[train["grad_lora"].notna()]
    traces = []
    for k, column in enumerate(columns):
        layer = f"layer {column.rsplit('_', 1)[1]}"
        traces.append(go.Scatter(x=train["step"], y=train[column].to_numpy(float) / train["grad_lora"].to_numpy(float),
                                 mode="lines+markers", name=layer, legendgroup=layer, showlegend=show_legend,
                                 line=dict(color=_layer_colour(k))))
    return traces


def gradient_ratio_over_steps(metrics) -> go.Figure:
    """Per layer, mean |gradient| of the H_res logits over LoRA's at every training step (written by runs with
    mHC at step 1 and every mHC snapshot), on a log axis: does H_res learn beside LoRA?"""
    traces = _gradient_traces(metrics, show_legend=True)
    if not traces:
        return message_figure(NO_GRADIENTS, title="H_res gradient beside LoRA's")
    fig = go.Figure(traces)
    fig.update_yaxes(type="log", exponentformat="power", title_text=GRADIENT_AXIS)
    fig.update_xaxes(title_text="training step")
    return apply_style(fig, title="H_res gradient relative to LoRA's, per layer")


def training_history_figure(snapshots: list[dict], drift: dict, metrics) -> go.Figure:
    """The three quantities in one figure, on one training-step axis: the sum error (top), each mapping's max |Delta|
    from init per layer (middle: H_res, H_pre, H_post on one y scale), H_res's gradient over LoRA's (bottom).
    A layer has one colour and one legend entry in the middle and bottom rows."""
    snapshots = [s for s in snapshots if np.asarray(s.get("h_res", [])).size]
    if not snapshots:
        return message_figure("This run has no mHC snapshots.", title="mHC over training")
    specs = [[{"colspan": 3}, None, None], [{}, {}, {}], [{"colspan": 3}, None, None]]
    titles = ["Doubly-stochastic error of H_res (worst over layers)",
              *(f"max |Δ| from init: {t}" for t in MAPPING_TITLES.values()),
              "H_res gradient relative to LoRA's, per layer"]
    fig = make_subplots(rows=3, cols=3, specs=specs, subplot_titles=titles, vertical_spacing=0.11,
                        horizontal_spacing=0.05)
    for trace in sum_error_traces(snapshots):
        fig.add_trace(trace, row=1, col=1)
    fig.update_yaxes(**LOG_DECADES, title_text="deviation from 1", row=1, col=1)
    for col, mapping in enumerate(MAPPING_TITLES, start=1):
        for trace in _drift_traces(drift, mapping, show_legend=col == 1):
            fig.add_trace(trace, row=2, col=col)
    fig.update_yaxes(title_text="max |Δ| from init", row=2, col=1)
    first_drift_y = axis_ref(fig.get_subplot(2, 1).yaxis)
    for col in (2, 3):  # one y scale for the three mappings: their moves read against each other
        fig.update_yaxes(matches=first_drift_y, showticklabels=False, row=2, col=col)
    gradients = _gradient_traces(metrics, show_legend=False)
    bottom = fig.get_subplot(3, 1)
    if gradients:
        for trace in gradients:
            fig.add_trace(trace, row=3, col=1)
        fig.update_yaxes(type="log", exponentformat="power", title_text="|∇ H_res| / |∇ LoRA|", row=3, col=1)
    else:  # an empty trace: plotly.js draws no axes for a subplot without one, and the note needs them
        fig.add_trace(go.Scatter(x=[], y=[], showlegend=False, hoverinfo="skip"), row=3, col=1)
        fig.add_annotation(text=NO_GRADIENTS, showarrow=False, x=0.5, y=0.5,
                           xref=f"{axis_ref(bottom.xaxis)} domain", yref=f"{axis_ref(bottom.yaxis)} domain",
                           font=dict(size=13, color="#444444"))
        fig.update_yaxes(showticklabels=False, ticks="", row=3, col=1)
    # every panel is over the same training steps: one zoom moves them all (an axis may not match itself)
    fig.for_each_xaxis(lambda axis: axis.update(matches="x") if axis.plotly_name != "xaxis" else None)
    fig.update_xaxes(title_text="training step", row=3, col=1)
    return apply_style(fig, title="mHC over training", height=860)
