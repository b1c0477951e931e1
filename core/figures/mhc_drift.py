"""How far mHC acted at one step: each mapping's change from its init (``core.evaluation.mhc_drift.mapping_drift``)
as signed heatmaps, and how far the streams have diverged (``stream_divergence``).

Each change is drawn on a colour scale symmetric about 0 whose range is its own largest |Delta| (not the mapping's
range), so a small move still reads. ``drift_at_step_figure`` (the Inspect page's) puts Delta H_res and Delta H_pre,
Delta H_post in one figure, each group with its own scale.
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.figures.style import OKABE_ITO, apply_style, axis_ref, message_figure

DIVERGING = "RdBu_r"  # blue below 0, white at 0, red above: a signed change reads at a glance
PRE_POST_TITLES = ["ΔH_pre (read-in)", "ΔH_post (write-out)"]


def _symmetric_bound(values) -> float:
    """Half-width of a colour scale centred on 0 that holds every value; never 0, so an unmoved map draws."""
    top = float(np.abs(np.asarray(values, dtype=float)).max(initial=0.0))
    return top if top > 0 else 1e-12


def _delta_heatmap(values, x, y, bound: float, hover: str, show_scale: bool, colorbar: dict,
                   text_size: int | None = None) -> go.Heatmap:
    return go.Heatmap(
        z=values, x=x, y=y, zmin=-bound, zmax=bound, zmid=0.0, colorscale=DIVERGING,
        text=np.round(values, 3), texttemplate="%{text:.3f}", textfont=dict(size=text_size) if text_size else None,
        showscale=show_scale, hovertemplate=hover,
        colorbar=dict(title=dict(text="Δ weight", side="right"), thickness=12, **colorbar))


def _add_h_res_grid(fig, delta, layers, bound: float, cells, colorbar: dict) -> None:
    """One square heatmap of Delta H_res [n, n] per layer, in the subplots ``cells`` [(row, col)] of ``fig``."""
    ticks = [f"s{i}" for i in range(delta.shape[-1])]
    for k, (r, c) in enumerate(cells):
        fig.add_trace(_delta_heatmap(delta[k], ticks, ticks, bound,
                                     "out %{y} ← in %{x}: Δ %{z:.4f}<extra>" + layers[k] + "</extra>",
                                     show_scale=k == 0, colorbar=colorbar, text_size=11), row=r, col=c)
        # square cells: the y-axis is tied to its x-axis; "domain" keeps the tick labels against the cells
        subplot = fig.get_subplot(r, c)
        fig.update_yaxes(autorange="reversed", scaleanchor=axis_ref(subplot.xaxis), constrain="domain",
                         showline=False, ticks="", row=r, col=c)
        fig.update_xaxes(side="bottom", constrain="domain", showline=False, ticks="", row=r, col=c)


def _add_pre_post(fig, pre, post, layers, bound: float, cells, colorbar: dict) -> None:
    ticks = [f"s{i}" for i in range(pre.shape[-1])]
    for k, ((r, c), values, name) in enumerate(zip(cells, (pre, post), ("ΔH_pre", "ΔH_post"))):
        fig.add_trace(_delta_heatmap(values, ticks, layers, bound,
                                     "%{y}, stream %{x}: Δ %{z:.4f}<extra>" + name + "</extra>",
                                     show_scale=k == 0, colorbar=colorbar), row=r, col=c)
        fig.update_yaxes(autorange="reversed", row=r, col=c)


def _colorbar_beside(fig, cells) -> dict:
    """A colour bar as tall as the rows of ``cells``, centred on them (two bars in one figure may not overlap)."""
    domains = [fig.get_subplot(r, c).yaxis.domain for r, c in cells]
    low, high = min(d[0] for d in domains), max(d[1] for d in domains)
    return dict(y=(low + high) / 2, len=high - low, yanchor="middle")


def drift_at_step_figure(drift: dict, index: int = -1, columns: int = 4) -> go.Figure:
    """Delta H_res of every layer (a grid, ``columns`` wide) above Delta H_pre and Delta H_post, from the first
    snapshot to snapshot ``index``, each group on its own symmetric scale (H_pre and H_post share one)."""
    delta, pre, post = (np.asarray(drift[f"delta_{m}"])[index] for m in ("h_res", "h_pre", "h_post"))
    layers = [f"layer {int(i)}" for i in drift["layer_indices"]]
    step, start = int(drift["steps"][index]), int(drift["steps"][0])
    n_layers = len(layers)
    columns = max(2, min(columns, n_layers))
    grid_rows = math.ceil(n_layers / columns)
    half = columns // 2
    specs = [[{} if r * columns + c < n_layers else None for c in range(columns)] for r in range(grid_rows)]
    specs.append([{"colspan": half}, *[None] * (half - 1), {"colspan": columns - half}, *[None] * (columns - half - 1)])
    fig = make_subplots(rows=grid_rows + 1, cols=columns, specs=specs, subplot_titles=[*layers, *PRE_POST_TITLES],
                        horizontal_spacing=0.06, vertical_spacing=0.22 / (grid_rows + 1) + 0.05)
    grid = [(k // columns + 1, k % columns + 1) for k in range(n_layers)]
    pre_post = [(grid_rows + 1, 1), (grid_rows + 1, half + 1)]
    res_bound = _symmetric_bound(delta)
    pre_post_bound = _symmetric_bound(np.concatenate([pre.ravel(), post.ravel()]))
    _add_h_res_grid(fig, delta, layers, res_bound, grid, colorbar=_colorbar_beside(fig, grid))
    _add_pre_post(fig, pre, post, layers, pre_post_bound, pre_post, colorbar=_colorbar_beside(fig, pre_post))
    title = (f"Change from init (step {start}) to step {step}: ΔH_res (largest |Δ| {res_bound:.3g}), "
             f"ΔH_pre and ΔH_post (largest |Δ| {pre_post_bound:.3g})")
    return apply_style(fig, title=title, height=260 * grid_rows + 60 + max(240, 30 * n_layers + 120))


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
