"""Figures of the mHC mappings saved during training (``runs/<name>/mhc/step_*.npz``).

A snapshot (``core.runs.load_mhc_snapshot``) holds, for L wrapped layers and n streams:
    h_res [L, n, n]   doubly stochastic residual mixing (rows sum to 1 exactly, columns to ~1)
    h_pre [L, n]      non-negative weights reading the layer input from the streams
    h_post [L, n]     non-negative weights writing the layer output back to the streams
    layer_indices [L] which backbone layers are wrapped; step: the training step
For dynamic (input-dependent) mappings these are means over a batch.
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.figures.style import OKABE_ITO, ROLE_COLOURS, SEQUENTIAL, apply_style, axis_ref, message_figure

# Sums that are exact to float precision would vanish on a log axis; errors are drawn at least this large.
ERROR_FLOOR = 1e-9


def sum_errors(h_res: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per layer, max |row sum - 1| and max |column sum - 1| of H_res [L, n, n]."""
    h = np.asarray(h_res, dtype=float)
    return np.abs(h.sum(-1) - 1).max(-1), np.abs(h.sum(-2) - 1).max(-1)


# Below this largest |gain - 1| the composite gain is 1 up to Sinkhorn's column error (README: ~1e-4 at 20
# iterations), i.e. by construction.
GAIN_BY_CONSTRUCTION = 1e-3


def composite_gains(h_res: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gain of the composite mapping P_k = H_res^(k) ... H_res^(1) over depth k = 1..L.

    The mHC paper (arXiv 2512.24880, Sec. 3 and its "Amax gain magnitude") measures signal growth across
    depth by the largest absolute row sum (forward pass) and column sum (backward pass) of this product;
    for doubly stochastic factors both stay 1, while unconstrained hyper-connections drift far from it.
    """
    h = np.asarray(h_res, dtype=float)
    product = np.eye(h.shape[-1])
    forward, backward = [], []
    for layer in h:
        product = layer @ product
        forward.append(np.abs(product).sum(-1).max())
        backward.append(np.abs(product).sum(-2).max())
    return np.array(forward), np.array(backward)


def _layer_labels(snapshot: dict) -> list[str]:
    return [f"layer {int(i)}" for i in np.asarray(snapshot["layer_indices"]).ravel()]


def _step(snapshot: dict) -> int:
    return int(np.asarray(snapshot.get("step", -1)))


def h_res_heatmaps(snapshot: dict, columns: int = 4) -> go.Figure:
    """H_res of every wrapped layer as an annotated heatmap (row i = output stream, column j = input)."""
    h_res = np.asarray(snapshot.get("h_res", []))
    if h_res.size == 0:
        return message_figure("This run has no mHC layers.", title="H_res")
    n_layers, n = h_res.shape[0], h_res.shape[-1]
    columns = min(columns, n_layers)
    rows = math.ceil(n_layers / columns)
    labels = _layer_labels(snapshot)
    fig = make_subplots(rows=rows, cols=columns, subplot_titles=labels,
                        horizontal_spacing=0.06, vertical_spacing=0.14 if rows > 1 else 0.1)
    ticks = [f"s{i}" for i in range(n)]
    for k in range(n_layers):
        r, c = k // columns + 1, k % columns + 1
        fig.add_trace(go.Heatmap(
            z=h_res[k], x=ticks, y=ticks, zmin=0.0, zmax=1.0, colorscale=SEQUENTIAL,
            text=np.round(h_res[k], 2), texttemplate="%{text:.2f}", textfont=dict(size=11),
            showscale=k == 0, colorbar=dict(title=dict(text="weight", side="right"), thickness=12),
            hovertemplate="out %{y} ← in %{x}: %{z:.4f}<extra>" + labels[k] + "</extra>",
        ), row=r, col=c)
        # Square cells: the y-axis is tied to its x-axis; "domain" keeps the tick labels against the cells.
        fig.update_yaxes(autorange="reversed", scaleanchor=axis_ref(fig.get_subplot(r, c).xaxis), constrain="domain",
                         row=r, col=c)
        fig.update_xaxes(side="bottom", constrain="domain", row=r, col=c)
    step = _step(snapshot)
    fig.update_xaxes(showline=False, ticks="")
    fig.update_yaxes(showline=False, ticks="")
    return apply_style(fig, title=f"H_res at step {step} (rows: output stream, columns: input stream)",
                       height=max(320, 260 * rows + 80))


def _sum_error_bar_traces(snapshot: dict) -> list[go.Bar]:
    row_err, col_err = sum_errors(snapshot["h_res"])
    labels = _layer_labels(snapshot)
    return [
        go.Bar(x=labels, y=np.maximum(row_err, ERROR_FLOOR), name="max |row sum − 1|",
               marker_color=ROLE_COLOURS["row"], customdata=row_err,
               hovertemplate="%{x}: %{customdata:.2e}<extra>rows</extra>"),
        go.Bar(x=labels, y=np.maximum(col_err, ERROR_FLOOR), name="max |column sum − 1|",
               marker_color=ROLE_COLOURS["col"], customdata=col_err,
               hovertemplate="%{x}: %{customdata:.2e}<extra>columns</extra>"),
    ]


# sum errors span decades down to ERROR_FLOOR: one tick a decade, written as powers of ten
LOG_DECADES = dict(type="log", dtick=1, exponentformat="power")
SUM_ERROR_AXIS = dict(LOG_DECADES, title_text=f"deviation from 1 (floor {ERROR_FLOOR:g})")


def sum_error_bars(snapshot: dict) -> go.Figure:
    """Row and column sum error of each layer's H_res in one snapshot (log scale)."""
    if np.asarray(snapshot.get("h_res", [])).size == 0:
        return message_figure("This run has no mHC layers.", title="H_res sum error")
    fig = go.Figure(_sum_error_bar_traces(snapshot))
    fig.update_layout(barmode="group")
    fig.update_yaxes(**SUM_ERROR_AXIS)
    fig.update_xaxes(title_text="wrapped layer")
    return apply_style(fig, title=f"Doubly-stochastic error of H_res at step {_step(snapshot)}")


def sum_error_traces(snapshots: list[dict]) -> list[go.Scatter]:
    """The worst row and column sum error over layers at each snapshot's step, as two lines."""
    steps = [int(np.asarray(s["step"])) for s in snapshots]
    errors = [sum_errors(s["h_res"]) for s in snapshots]
    return [
        go.Scatter(x=steps, y=[max(e[0].max(), ERROR_FLOOR) for e in errors], mode="lines+markers",
                   name="max |row sum − 1|", line=dict(color=ROLE_COLOURS["row"])),
        go.Scatter(x=steps, y=[max(e[1].max(), ERROR_FLOOR) for e in errors], mode="lines+markers",
                   name="max |column sum − 1|", line=dict(color=ROLE_COLOURS["col"], dash="dash")),
    ]


def sum_error_over_steps(snapshots: list[dict]) -> go.Figure:
    """Worst row and column sum error over layers, at each saved step: does training stay on the manifold?"""
    snapshots = [s for s in snapshots if np.asarray(s.get("h_res", [])).size]
    if not snapshots:
        return message_figure("This run has no mHC snapshots.", title="H_res sum error over training")
    fig = go.Figure(sum_error_traces(snapshots))
    fig.update_xaxes(title_text="training step")
    fig.update_yaxes(**LOG_DECADES, title_text="worst deviation over layers")
    return apply_style(fig, title="Doubly-stochastic error of H_res over training")


def _composite_gain(snapshot: dict) -> tuple[list[go.Scatter], float, float]:
    """(the forward and backward gain over depth as lines, the top of their y axis, their largest |gain - 1|)."""
    forward, backward = composite_gains(snapshot["h_res"])
    depth = np.arange(1, len(forward) + 1)
    traces = [
        go.Scatter(x=depth, y=forward, mode="lines+markers", name="max row sum (forward)",
                   line=dict(color=ROLE_COLOURS["row"])),
        go.Scatter(x=depth, y=backward, mode="lines+markers", name="max column sum (backward)",
                   line=dict(color=ROLE_COLOURS["col"], dash="dash")),
    ]
    top = max(1.1, float(np.max([forward.max(), backward.max()])) * 1.05)
    return traces, top, float(np.max(np.abs(np.r_[forward, backward] - 1.0)))


GAIN_X_AXIS = dict(title_text="layers composed (product of H_res over depth)", dtick=1)
GAIN_Y_TITLE = "gain of ∏ H_res (1 = no growth)"


def _by_construction_note(deviation: float) -> str:
    # Doubly stochastic factors have a doubly stochastic product: a flat line at 1 is the constraint holding,
    # not a measurement that training changed nothing. Say so instead of leaving it to guess.
    # line breaks: the panel is half the page wide, and plotly does not wrap annotation text
    return (f"1 by construction: every H_res is doubly stochastic,<br>so their product is too (largest deviation "
            f"{deviation:.1e}).<br>It would leave 1 only if the projection failed;<br>see the sum error for how "
            "closely it holds.")


NOTE_STYLE = dict(x=0.5, y=0.35, showarrow=False, align="center", font=dict(size=12, color="#444444"),
                  bgcolor="rgba(255,255,255,0.85)")
# legend below: the panel is half the page wide, and a legend beside it left the plot (and its note) no room
LEGEND_BELOW = dict(orientation="h", yanchor="top", y=-0.22, x=0, xanchor="left")


def composite_gain_figure(snapshot: dict) -> go.Figure:
    if np.asarray(snapshot.get("h_res", [])).size == 0:
        return message_figure("This run has no mHC layers.", title="Composite gain over depth")
    traces, top, deviation = _composite_gain(snapshot)
    fig = go.Figure(traces)
    fig.add_hline(y=1.0, line=dict(color="#777777", width=1, dash="dot"))
    fig.update_layout(legend=LEGEND_BELOW)
    fig.update_xaxes(**GAIN_X_AXIS)
    fig.update_yaxes(title_text=GAIN_Y_TITLE, range=[0, top])
    if deviation < GAIN_BY_CONSTRUCTION:
        fig.add_annotation(text=_by_construction_note(deviation), xref="paper", yref="paper", **NOTE_STYLE)
        return apply_style(fig, title=f"Composite gain at step {_step(snapshot)}: 1 by construction")
    return apply_style(fig, title=f"Composite gain over depth at step {_step(snapshot)}")


def step_summary_figure(snapshot: dict) -> go.Figure:
    """``sum_error_bars`` (left) and ``composite_gain_figure`` (right) of one snapshot in one figure, as the Inspect
    page draws them: does H_res hold its constraint at this step, and does its product over depth stay at 1?"""
    if np.asarray(snapshot.get("h_res", [])).size == 0:
        return message_figure("This run has no mHC layers.", title="H_res sum error and composite gain")
    traces, top, deviation = _composite_gain(snapshot)
    constructed = deviation < GAIN_BY_CONSTRUCTION
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12, subplot_titles=[
        "Doubly-stochastic error per layer",
        "Composite gain over depth" + (": 1 by construction" if constructed else "")])
    for trace in _sum_error_bar_traces(snapshot):
        fig.add_trace(trace, row=1, col=1)
    for trace in traces:
        fig.add_trace(trace, row=1, col=2)
    fig.add_hline(y=1.0, line=dict(color="#777777", width=1, dash="dot"), row=1, col=2)
    fig.update_layout(barmode="group", legend=LEGEND_BELOW)
    fig.update_yaxes(**SUM_ERROR_AXIS, row=1, col=1)
    fig.update_xaxes(title_text="wrapped layer", row=1, col=1)
    fig.update_xaxes(**GAIN_X_AXIS, row=1, col=2)
    fig.update_yaxes(title_text=GAIN_Y_TITLE, range=[0, top], row=1, col=2)
    if constructed:
        fig.add_annotation(text=_by_construction_note(deviation), xref="x2 domain", yref="y2 domain", **NOTE_STYLE)
    return apply_style(fig, title=f"Doubly-stochastic error and composite gain at step {_step(snapshot)}")


def h_pre_post_bars(snapshot: dict) -> go.Figure:
    """H_pre (read weights) and H_post (write weights) per layer, one bar per stream."""
    h_pre, h_post = np.asarray(snapshot.get("h_pre", [])), np.asarray(snapshot.get("h_post", []))
    if h_pre.size == 0:
        return message_figure("This run has no mHC layers.", title="H_pre and H_post")
    labels = _layer_labels(snapshot)
    fig = make_subplots(rows=1, cols=2, subplot_titles=["H_pre (reads the layer input)",
                                                        "H_post (writes the layer output)"])
    for s in range(h_pre.shape[-1]):
        colour = OKABE_ITO[s % len(OKABE_ITO)]
        fig.add_trace(go.Bar(x=labels, y=h_pre[:, s], name=f"stream {s}", marker_color=colour,
                             legendgroup=f"s{s}"), row=1, col=1)
        fig.add_trace(go.Bar(x=labels, y=h_post[:, s], name=f"stream {s}", marker_color=colour,
                             legendgroup=f"s{s}", showlegend=False), row=1, col=2)
    fig.update_layout(barmode="group")
    fig.update_yaxes(title_text="weight (non-negative)", row=1, col=1)
    fig.update_xaxes(title_text="wrapped layer")
    return apply_style(fig, title=f"H_pre and H_post at step {_step(snapshot)}")


def mhc_figures(snapshots: list[dict], index: int = -1) -> dict[str, go.Figure]:
    """Every mHC figure of a run, for snapshot ``index`` (default: the last), one quantity a figure (the files
    ``python -m core figures`` and the Export page write)."""
    if not snapshots:
        empty = message_figure("This run saved no mHC snapshots (mHC off).", title="mHC")
        return {"h_res": empty}
    snapshot = snapshots[index]
    return {
        "h_res": h_res_heatmaps(snapshot),
        "h_res_sum_error": sum_error_bars(snapshot),
        "h_res_sum_error_over_steps": sum_error_over_steps(snapshots),
        "composite_gain": composite_gain_figure(snapshot),
        "h_pre_post": h_pre_post_bars(snapshot),
    }
