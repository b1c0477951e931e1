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

from core.figures.style import OKABE_ITO, ROLE_COLOURS, SEQUENTIAL, apply_style, message_figure

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
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{k + 1 if k else ''}", constrain="domain",
                         row=r, col=c)
        fig.update_xaxes(side="bottom", constrain="domain", row=r, col=c)
    step = int(np.asarray(snapshot.get("step", -1)))
    fig.update_xaxes(showline=False, ticks="")
    fig.update_yaxes(showline=False, ticks="")
    return apply_style(fig, title=f"H_res at step {step} (rows: output stream, columns: input stream)",
                       height=max(320, 260 * rows + 80))


def sum_error_bars(snapshot: dict) -> go.Figure:
    """Row and column sum error of each layer's H_res in one snapshot (log scale)."""
    h_res = np.asarray(snapshot.get("h_res", []))
    if h_res.size == 0:
        return message_figure("This run has no mHC layers.", title="H_res sum error")
    row_err, col_err = sum_errors(h_res)
    labels = _layer_labels(snapshot)
    fig = go.Figure([
        go.Bar(x=labels, y=np.maximum(row_err, ERROR_FLOOR), name="max |row sum − 1|",
               marker_color=ROLE_COLOURS["row"], customdata=row_err,
               hovertemplate="%{x}: %{customdata:.2e}<extra>rows</extra>"),
        go.Bar(x=labels, y=np.maximum(col_err, ERROR_FLOOR), name="max |column sum − 1|",
               marker_color=ROLE_COLOURS["col"], customdata=col_err,
               hovertemplate="%{x}: %{customdata:.2e}<extra>columns</extra>"),
    ])
    fig.update_layout(barmode="group")
    fig.update_yaxes(type="log", dtick=1, exponentformat="power",
                     title_text=f"deviation from 1 (floor {ERROR_FLOOR:g})")
    fig.update_xaxes(title_text="wrapped layer")
    step = int(np.asarray(snapshot.get("step", -1)))
    return apply_style(fig, title=f"Doubly-stochastic error of H_res at step {step}")


def sum_error_over_steps(snapshots: list[dict]) -> go.Figure:
    """Worst row and column sum error over layers, at each saved step: does training stay on the manifold?"""
    snapshots = [s for s in snapshots if np.asarray(s.get("h_res", [])).size]
    if not snapshots:
        return message_figure("This run has no mHC snapshots.", title="H_res sum error over training")
    steps = [int(np.asarray(s["step"])) for s in snapshots]
    errors = [sum_errors(s["h_res"]) for s in snapshots]
    fig = go.Figure([
        go.Scatter(x=steps, y=[max(e[0].max(), ERROR_FLOOR) for e in errors], mode="lines+markers",
                   name="max |row sum − 1|", line=dict(color=ROLE_COLOURS["row"])),
        go.Scatter(x=steps, y=[max(e[1].max(), ERROR_FLOOR) for e in errors], mode="lines+markers",
                   name="max |column sum − 1|", line=dict(color=ROLE_COLOURS["col"], dash="dash")),
    ])
    fig.update_xaxes(title_text="training step")
    fig.update_yaxes(type="log", dtick=1, exponentformat="power", title_text="worst deviation over layers")
    return apply_style(fig, title="Doubly-stochastic error of H_res over training")


def composite_gain_figure(snapshot: dict) -> go.Figure:
    h_res = np.asarray(snapshot.get("h_res", []))
    if h_res.size == 0:
        return message_figure("This run has no mHC layers.", title="Composite gain over depth")
    forward, backward = composite_gains(h_res)
    depth = np.arange(1, len(forward) + 1)
    fig = go.Figure([
        go.Scatter(x=depth, y=forward, mode="lines+markers", name="max row sum (forward)",
                   line=dict(color=ROLE_COLOURS["row"])),
        go.Scatter(x=depth, y=backward, mode="lines+markers", name="max column sum (backward)",
                   line=dict(color=ROLE_COLOURS["col"], dash="dash")),
    ])
    fig.add_hline(y=1.0, line=dict(color="#777777", width=1, dash="dot"))
    # legend below: the figure is drawn half-width, and a legend beside it left the plot (and its note) no room
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.22, x=0, xanchor="left"))
    top = max(1.1, float(np.max([forward.max(), backward.max()])) * 1.05)
    fig.update_xaxes(title_text="layers composed (product of H_res over depth)", dtick=1)
    fig.update_yaxes(title_text="gain of ∏ H_res (1 = no growth)", range=[0, top])
    step = int(np.asarray(snapshot.get("step", -1)))
    deviation = float(np.max(np.abs(np.r_[forward, backward] - 1.0)))
    if deviation < GAIN_BY_CONSTRUCTION:
        # Doubly stochastic factors have a doubly stochastic product: a flat line at 1 is the constraint
        # holding, not a measurement that training changed nothing. Say so instead of leaving it to guess.
        # line breaks: the figure is drawn half-width, and plotly does not wrap annotation text
        fig.add_annotation(text=f"1 by construction: every H_res is doubly stochastic,<br>so their product is "
                                f"too (largest deviation {deviation:.1e}).<br>It would leave 1 only if the "
                                "projection failed;<br>see the sum error for how closely it holds.",
                           x=0.5, y=0.35, xref="paper", yref="paper", showarrow=False, align="center",
                           font=dict(size=12, color="#444444"), bgcolor="rgba(255,255,255,0.85)")
        return apply_style(fig, title=f"Composite gain at step {step}: 1 by construction")
    return apply_style(fig, title=f"Composite gain over depth at step {step}")


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
    step = int(np.asarray(snapshot.get("step", -1)))
    return apply_style(fig, title=f"H_pre and H_post at step {step}")


def mhc_figures(snapshots: list[dict], index: int = -1) -> dict[str, go.Figure]:
    """Every mHC figure of a run, for snapshot ``index`` (default: the last)."""
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


# ---------------------------------------------------------------------------------------------------
# How far mHC acted: drift from init (core.evaluation.mhc_drift.mapping_drift) and stream divergence

DIVERGING = "RdBu_r"  # blue below 0, white at 0, red above: a signed change reads at a glance


def _symmetric_bound(values) -> float:
    """Half-width of a colour scale centred on 0 that holds every value; never 0, so an unmoved map draws."""
    top = float(np.abs(np.asarray(values, dtype=float)).max(initial=0.0))
    return top if top > 0 else 1e-12


def h_res_drift_heatmaps(drift: dict, index: int = -1, columns: int = 4) -> go.Figure:
    """Delta H_res = H_res(step) - H_res(init) of every layer at snapshot ``index`` (default: the last), on one
    colour scale symmetric about 0 whose range is this figure's own largest |Delta| (not H_res's 0..1)."""
    delta = np.asarray(drift["delta_h_res"])[index]  # [L, n, n]
    step, layers = int(drift["steps"][index]), [f"layer {int(i)}" for i in drift["layer_indices"]]
    n_layers, n = delta.shape[0], delta.shape[-1]
    columns = min(columns, n_layers)
    rows = math.ceil(n_layers / columns)
    bound = _symmetric_bound(delta)
    fig = make_subplots(rows=rows, cols=columns, subplot_titles=layers, horizontal_spacing=0.06,
                        vertical_spacing=0.14 if rows > 1 else 0.1)
    ticks = [f"s{i}" for i in range(n)]
    for k in range(n_layers):
        r, c = k // columns + 1, k % columns + 1
        fig.add_trace(go.Heatmap(
            z=delta[k], x=ticks, y=ticks, zmin=-bound, zmax=bound, zmid=0.0, colorscale=DIVERGING,
            text=np.round(delta[k], 3), texttemplate="%{text:.3f}", textfont=dict(size=11), showscale=k == 0,
            colorbar=dict(title=dict(text="Δ weight", side="right"), thickness=12),
            hovertemplate="out %{y} ← in %{x}: Δ %{z:.4f}<extra>" + layers[k] + "</extra>",
        ), row=r, col=c)
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{k + 1 if k else ''}", constrain="domain",
                         row=r, col=c)
        fig.update_xaxes(side="bottom", constrain="domain", row=r, col=c)
    fig.update_xaxes(showline=False, ticks="")
    fig.update_yaxes(showline=False, ticks="")
    title = (f"ΔH_res from init (step {int(drift['steps'][0])}) to step {step}; largest |Δ| {bound:.3g}")
    return apply_style(fig, title=title, height=max(320, 260 * rows + 80))


def pre_post_drift_heatmap(drift: dict, index: int = -1) -> go.Figure:
    """Delta H_pre and Delta H_post (layers x streams) at snapshot ``index``, one symmetric scale for both."""
    pre, post = np.asarray(drift["delta_h_pre"])[index], np.asarray(drift["delta_h_post"])[index]
    layers = [f"layer {int(i)}" for i in drift["layer_indices"]]
    ticks = [f"s{i}" for i in range(pre.shape[-1])]
    bound = _symmetric_bound(np.concatenate([pre.ravel(), post.ravel()]))
    fig = make_subplots(rows=1, cols=2, subplot_titles=["ΔH_pre (read-in)", "ΔH_post (write-out)"])
    for col, (values, name) in enumerate(((pre, "ΔH_pre"), (post, "ΔH_post")), start=1):
        fig.add_trace(go.Heatmap(
            z=values, x=ticks, y=layers, zmin=-bound, zmax=bound, zmid=0.0, colorscale=DIVERGING,
            text=np.round(values, 3), texttemplate="%{text:.3f}", showscale=col == 1,
            colorbar=dict(title=dict(text="Δ weight", side="right"), thickness=12),
            hovertemplate="%{y}, stream %{x}: Δ %{z:.4f}<extra>" + name + "</extra>"), row=1, col=col)
        fig.update_yaxes(autorange="reversed", row=1, col=col)
    step = int(drift["steps"][index])
    return apply_style(fig, title=f"ΔH_pre and ΔH_post from init to step {step}; largest |Δ| {bound:.3g}")


def drift_over_steps(drift: dict) -> go.Figure:
    """max |Delta| from init of H_res, H_pre and H_post, per layer, at every snapshot step."""
    steps = np.asarray(drift["steps"])
    fig = make_subplots(rows=1, cols=3, subplot_titles=["H_res", "H_pre", "H_post"], shared_yaxes=True)
    for col, name in enumerate(("h_res", "h_pre", "h_post"), start=1):
        for k, layer in enumerate(drift["layer_indices"]):
            fig.add_trace(go.Scatter(
                x=steps, y=np.asarray(drift[f"max_abs_{name}"])[:, k], mode="lines+markers",
                name=f"layer {int(layer)}", legendgroup=f"l{k}", showlegend=col == 1,
                line=dict(color=OKABE_ITO[k % len(OKABE_ITO)])), row=1, col=col)
    fig.update_xaxes(title_text="training step")
    fig.update_yaxes(title_text="max |Δ| from init", row=1, col=1)
    return apply_style(fig, title="How far each mapping has moved from its init")


def stream_divergence_figure(divergence: dict) -> go.Figure:
    """The streams entering each layer (``core.evaluation.mhc_drift.stream_divergence``), for each model given
    ({"init": ..., "trained": ...}): their mean pairwise cosine, and their spread about their mean."""
    if not divergence:
        return message_figure("No stream divergence measured.", title="Stream divergence")
    fig = make_subplots(rows=1, cols=2, subplot_titles=["mean pairwise cosine (1 = parallel)",
                                                        "spread about the mean / its norm"])
    for k, (label, values) in enumerate(divergence.items()):
        layers = [f"layer {int(i)}" for i in values["layer_indices"]]
        for col, key in ((1, "mean_cosine"), (2, "relative_spread")):
            fig.add_trace(go.Bar(x=layers, y=values[key], name=label, marker_color=OKABE_ITO[k % len(OKABE_ITO)],
                                 legendgroup=label, showlegend=col == 1,
                                 hovertemplate="%{x}: %{y:.6f}<extra>" + label + "</extra>"), row=1, col=col)
    low = min(float(np.min(v["mean_cosine"])) for v in divergence.values())
    fig.update_layout(barmode="group")
    # cosines near 1 differ in their last digits: the axis starts just below the lowest
    fig.update_yaxes(range=[min(low - 0.1 * (1 - low) - 1e-6, 1 - 1e-5), 1.0], row=1, col=1)
    fig.update_xaxes(title_text="wrapped layer (streams entering it)")
    return apply_style(fig, title="Stream divergence: how different the n streams have become")


def gradient_ratio_over_steps(metrics) -> go.Figure:
    """Per layer, mean |gradient| of the H_res logits over LoRA's at every training step (metrics.jsonl columns
    grad_h_res_<layer> and grad_lora, written by runs with mHC at step 1 and every mHC snapshot), on a log axis:
    does H_res learn beside LoRA?"""
    columns = sorted((c for c in getattr(metrics, "columns", []) if c.startswith("grad_h_res_")),
                     key=lambda c: int(c.rsplit("_", 1)[1]))
    if not columns or "grad_lora" not in metrics.columns:
        return message_figure("This run logged no mHC gradients (mHC off, or a run older than this panel).",
                              title="H_res gradient beside LoRA's")
    train = metrics[metrics["split"].fillna("train") == "train"] if "split" in metrics.columns else metrics
    train = train[train["grad_lora"].notna()]
    fig = go.Figure()
    for k, column in enumerate(columns):
        ratio = train[column].to_numpy(float) / train["grad_lora"].to_numpy(float)
        fig.add_trace(go.Scatter(x=train["step"], y=ratio, mode="lines+markers",
                                 name=f"layer {column.rsplit('_', 1)[1]}",
                                 line=dict(color=OKABE_ITO[k % len(OKABE_ITO)])))
    fig.update_yaxes(type="log", exponentformat="power", title_text="mean |∇ H_res logits| / mean |∇ LoRA|")
    fig.update_xaxes(title_text="training step")
    return apply_style(fig, title="H_res gradient relative to LoRA's, per layer")
