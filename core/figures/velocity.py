"""Figures of cells on a 2-D embedding, RNA velocity, and how the predicted shift Δz lines up with it.

Inputs are plain arrays (the app and the CLI pull them from AnnData keys):
    coords [N, 2]        a 2-D obsm (X_umap by default)
    arrows [N, 2]        latent vectors already projected onto coords (``core.figures.arrows``)
    cos [N], delta_norm [N], v_norm [N], cell_types [N]   per control cell, from the evaluation's predictions
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.figures.arrows import grid_average
from core.figures.style import (
    GREY,
    ROLE_COLOURS,
    SEQUENTIAL,
    apply_style,
    category_colours,
    message_figure,
    subsample_index,
)

# Cells drawn in one scatter (a fixed sample above it, named in the title). The browser's time grows with them:
# switching to the Data page of a 100,008-cell file took 1.2 s at 30,000 (headless chromium, load ~3), 1.0 s
# at 20,000, 0.74 s at 10,000; the 12,000-cell demo is drawn whole.
MAX_SCATTER_POINTS = 15_000
# WebGL pays off only for many points: each WebGL figure opens its own context (slow where the browser renders in
# software), while SVG draws a few thousand markers quickly. Two small WebGL scatters made the Inspect page's
# velocity tab take ~1.4 s in headless chromium; as SVG, ~0.5 s.
WEBGL_MIN_POINTS = 5_000


def points_trace(n_points: int):
    """The plotly scatter class for ``n_points`` markers: SVG below WEBGL_MIN_POINTS, WebGL above."""
    return go.Scattergl if n_points >= WEBGL_MIN_POINTS else go.Scatter


def _is_categorical(values: pd.Series) -> bool:
    return (isinstance(values.dtype, pd.CategoricalDtype) or values.dtype == object
            or values.dtype == bool or (values.dtype.kind in "iu" and values.nunique() <= 20))


def _axis_titles(fig: go.Figure, basis: str) -> None:
    # Embedding coordinates have no physical unit; say so rather than leave the axes unlabelled.
    fig.update_xaxes(title_text=f"{basis} 1 (a.u.)", showticklabels=False, ticks="")
    fig.update_yaxes(title_text=f"{basis} 2 (a.u.)", showticklabels=False, ticks="", scaleanchor="x")
    # Legend below the plot, so a half-width figure keeps its (equal-aspect) plotting area.
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.12, x=0, xanchor="left"))


def embedding_scatter(coords: np.ndarray, values, colour_name: str, basis: str = "UMAP",
                      max_points: int = MAX_SCATTER_POINTS, seed: int = 0) -> go.Figure:
    """Cells on a 2-D embedding coloured by one obs column (categories: Okabe-Ito; numbers: viridis)."""
    coords = np.asarray(coords)
    values = values.reset_index(drop=True) if isinstance(values, pd.Series) else pd.Series(np.asarray(values))
    keep = subsample_index(len(coords), max_points, seed)
    fig = go.Figure(cell_traces(coords[keep], values.iloc[keep], colour_name, categories=values))
    fig.update_layout(legend=dict(itemsizing="constant"))  # the title already names the column
    _axis_titles(fig, basis)
    note = f" ({len(keep):,} of {len(coords):,} cells shown)" if len(keep) < len(coords) else ""
    return apply_style(fig, title=f"{basis} coloured by {colour_name}{note}", height=560)


def cell_traces(xy: np.ndarray, values, colour_name: str, categories=None, limits: tuple | None = None,
                legend: bool = True, opacity: float = 0.7) -> list:
    """Markers for cells at ``xy`` [M, 2] coloured by ``values`` [M]: one trace per category (Okabe-Ito, in the
    order of ``categories``, default ``values``' own), or one viridis trace for numbers (on ``limits``, so
    several panels share a scale)."""
    values = pd.Series(np.asarray(values))
    scatter = points_trace(len(xy))
    if _is_categorical(values):
        colours = category_colours(pd.Series(np.asarray(values if categories is None else categories))
                                   .astype(str).unique())
        labels = values.astype(str).to_numpy()
        return [scatter(x=xy[labels == category, 0], y=xy[labels == category, 1], mode="markers", name=category,
                        marker=dict(size=3, color=colour, opacity=opacity), legendgroup=category,
                        showlegend=legend, hovertemplate=category + "<extra></extra>")
                for category, colour in colours.items()]
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    low, high = limits if limits else (None, None)
    return [scatter(x=xy[:, 0], y=xy[:, 1], mode="markers", name=colour_name, showlegend=False,
                    marker=dict(size=3, color=numbers, colorscale=SEQUENTIAL, showscale=legend, cmin=low, cmax=high,
                                opacity=opacity, colorbar=dict(title=dict(text=colour_name))))]


def _background(fig: go.Figure, coords: np.ndarray, max_points: int, seed: int = 0, colour_values=None,
                colour_name: str = "", categories=None) -> None:
    """The cells under the arrows: grey, or coloured like the embedding beside them (``colour_values`` [N])."""
    keep = subsample_index(len(coords), max_points, seed)
    if colour_values is not None:
        values = pd.Series(np.asarray(colour_values))
        order = values if categories is None else categories
        for trace in cell_traces(coords[keep], values.iloc[keep], colour_name, categories=order, opacity=0.35):
            fig.add_trace(trace.update(hoverinfo="skip"))
        return
    scatter = points_trace(len(keep))
    fig.add_trace(scatter(x=coords[keep, 0], y=coords[keep, 1], mode="markers", name="cells",
                          marker=dict(size=3, color=GREY, opacity=0.35), hoverinfo="skip", showlegend=False))


def arrow_paths(x, y, u, v, scale: float, head: float = 0.35, angle: float = np.pi / 9):
    """Polyline coordinates of arrows from (x, y) along scale*(u, v), each with a two-barb head of
    ``head`` times its length at ``angle`` to the shaft; arrows are separated by NaN (a gap in plotly).
    Vectorised equivalent of plotly's ``figure_factory.create_quiver`` (which loops in Python)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    dx, dy = scale * np.asarray(u, float), scale * np.asarray(v, float)
    tip_x, tip_y = x + dx, y + dy
    back = np.arctan2(dy, dx) + np.pi
    length = head * np.hypot(dx, dy)
    left_x, left_y = tip_x + length * np.cos(back + angle), tip_y + length * np.sin(back + angle)
    right_x, right_y = tip_x + length * np.cos(back - angle), tip_y + length * np.sin(back - angle)
    gap = np.full_like(x, np.nan)
    # per arrow: tail, tip, gap, left barb, tip, right barb, gap
    xs = np.stack([x, tip_x, gap, left_x, tip_x, right_x, gap], 1).ravel()
    ys = np.stack([y, tip_y, gap, left_y, tip_y, right_y, gap], 1).ravel()
    return xs, ys


def _quiver_trace(x, y, u, v, scale: float, colour: str, name: str, width: float = 1.6,
                  opacity: float = 1.0) -> go.Scatter:
    xs, ys = arrow_paths(x, y, u, v, scale)
    return go.Scatter(x=xs, y=ys, mode="lines", line=dict(color=colour, width=width), name=name,
                      opacity=opacity, hoverinfo="skip", showlegend=True)


def _layering(names: list[str]) -> list[tuple[str, float, float]]:
    """(name, line width, opacity) in drawing order. Δz, the model's prediction, is drawn last (on top);
    fields beneath are wider and translucent, so where two arrows coincide the lower one shows as a halo
    around the upper one instead of hiding it (v_z used to cover Δz completely)."""
    order = sorted(names, key=lambda name: name == "Δz")
    depth = len(order) - 1
    return [(name, 1.6 + 1.8 * (depth - k), 1.0 if k == depth else 0.55) for k, name in enumerate(order)]


def _display_scale(coords: np.ndarray, arrow_fields: dict, n_arrows: int) -> float:
    """One length scale for all fields, so the longest typical arrow spans about one grid step."""
    extent = float(np.ptp(coords, axis=0).max()) or 1.0
    lengths = np.concatenate([np.linalg.norm(a, axis=-1).ravel() for a in arrow_fields.values()])
    lengths = lengths[np.isfinite(lengths) & (lengths > 0)]
    if not len(lengths):
        return 1.0
    return extent / np.sqrt(max(n_arrows, 1)) / float(np.percentile(lengths, 90))


def arrows_figure(coords: np.ndarray, arrow_fields: dict[str, np.ndarray], mode: str = "grid",
                  grid_size: int = 25, n_cells: int = 600, basis: str = "UMAP", title: str | None = None,
                  seed: int = 0, colour_values=None, colour_name: str = "", categories=None) -> go.Figure:
    """Arrows of one or more projected fields (e.g. {"Δz": ..., "v_z": ...}) over the cells, grey or coloured
    by ``colour_values`` [N] (as the embedding beside it is; ``categories``: the values whose order gives the
    colours, when ``coords`` are a sample of the embedding's cells).

    ``mode="grid"`` averages arrows on a grid (readable at any cell count, the default); ``"cells"``
    draws one arrow per cell for a random subsample of ``n_cells``.
    """
    coords = np.asarray(coords, dtype=float)
    if not arrow_fields:
        return message_figure("No vectors to draw.", title=title)
    fig = go.Figure()
    _background(fig, coords, MAX_SCATTER_POINTS, seed, colour_values, colour_name, categories)
    fig.update_layout(legend=dict(itemsizing="constant"))  # a category's marker as big as an arrow's line
    spare = iter(["#009E73", "#CC79A7", "#E69F00", "#56B4E9"])
    roles = {"Δz": ROLE_COLOURS["delta_z"], "v_z": ROLE_COLOURS["v_z"], "velocity": ROLE_COLOURS["v_z"]}
    colours = {name: roles.get(name) or next(spare) for name in arrow_fields}
    layers = _layering(list(arrow_fields))
    if mode == "grid":
        averaged = {name: grid_average(coords, a, grid_size) for name, a in arrow_fields.items()}
        scale = _display_scale(coords, {n: np.stack([g[2], g[3]], -1) for n, g in averaged.items()},
                               grid_size ** 2)
        for name, width, opacity in layers:
            xs, ys, u, v = averaged[name]
            gx, gy = np.meshgrid(xs, ys)
            ok = np.isfinite(u) & np.isfinite(v) & ((u != 0) | (v != 0))
            if ok.any():
                fig.add_trace(_quiver_trace(gx[ok], gy[ok], u[ok], v[ok], scale, colours[name], name, width,
                                            opacity))
        detail = f"grid-averaged on {grid_size}×{grid_size}"
    else:
        keep = subsample_index(len(coords), n_cells, seed)
        scale = _display_scale(coords, {n: a[keep] for n, a in arrow_fields.items()}, len(keep))
        for name, width, opacity in layers:
            a = np.asarray(arrow_fields[name])[keep]
            x, y = coords[keep, 0], coords[keep, 1]
            fig.add_trace(_quiver_trace(x, y, a[:, 0], a[:, 1], scale, colours[name], name, width, opacity))
        detail = f"one arrow per cell, {len(keep):,} of {len(coords):,} cells"
    _axis_titles(fig, basis)
    names = " and ".join(arrow_fields)
    return apply_style(fig, title=title or f"{names} on the {basis} ({detail})", height=560)


def confidence_histogram(confidence: np.ndarray, min_confidence: float | None = None) -> go.Figure:
    confidence = np.asarray(confidence, dtype=float)
    confidence = confidence[np.isfinite(confidence)]
    if not len(confidence):
        return message_figure("No velocity confidence available.", title="Velocity confidence")
    fig = go.Figure(go.Histogram(x=confidence, nbinsx=50, marker_color=ROLE_COLOURS["v_z"], name="cells"))
    if min_confidence is not None:
        kept = float((confidence >= min_confidence).mean())
        fig.add_vline(x=min_confidence, line=dict(color="black", dash="dash"),
                      annotation_text=f"min confidence {min_confidence:g}: {kept:.0%} of cells kept",
                      annotation_position="top right")
    fig.update_xaxes(title_text="velocity confidence (coherence with neighbours, 0 to 1)")
    fig.update_yaxes(title_text="cells (count)")
    return apply_style(fig, title=f"Velocity confidence, median {np.median(confidence):.2f}", height=380)


def cos_histograms(cos: np.ndarray, cell_types, bins: int = 40) -> go.Figure:
    """Distribution of cos(Δz, v_z) in each cell type, one panel per type, median marked."""
    cos = np.asarray(cos, dtype=float)
    types = pd.Series(np.asarray(cell_types)).astype(str)
    ok = np.isfinite(cos)
    if not ok.any():
        return message_figure("No cells with both Δz and a velocity.", title="cos(Δz, v_z) per cell type")
    names = sorted(types[ok].unique())
    colours = category_colours(names)
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=names, shared_xaxes=True,
                        vertical_spacing=0.12 if rows > 1 else 0.1, horizontal_spacing=0.07)
    medians = []  # one layout update for all median lines: add_vline per panel is slow
    for k, name in enumerate(names):
        values = cos[ok & (types == name).to_numpy()]
        r, c = k // cols + 1, k % cols + 1
        fig.add_trace(go.Histogram(x=values, xbins=dict(start=-1, end=1, size=2 / bins), name=name,
                                   marker_color=colours[name], showlegend=False), row=r, col=c)
        median = float(np.median(values))
        axis = "" if k == 0 else str(k + 1)
        medians.append(dict(type="line", x0=median, x1=median, xref=f"x{axis}", y0=0, y1=1,
                            yref=f"y{axis} domain", line=dict(color="black", width=1.5, dash="dash")))
        fig.layout.annotations[k].text = f"{name} (n={len(values)}, median {median:+.2f})"
    fig.update_layout(shapes=medians)
    fig.update_xaxes(range=[-1, 1], dtick=0.5)
    for c in range(1, cols + 1):
        fig.update_xaxes(title_text="cos(Δz, v_z)", row=rows, col=c)
    for r in range(1, rows + 1):
        fig.update_yaxes(title_text="cells", row=r, col=1)
    fig.update_annotations(font_size=12)
    return apply_style(fig, title="Alignment of the predicted shift with velocity, per cell type",
                       height=max(320, 240 * rows + 100))


def norm_scatter(delta_norm: np.ndarray, v_norm: np.ndarray, cell_types,
                 max_points: int = 5000, seed: int = 0) -> go.Figure:
    """‖Δz‖ against ‖v_z‖ per control cell, log-log, with the line of equal length."""
    delta_norm, v_norm = np.asarray(delta_norm, float), np.asarray(v_norm, float)
    types = pd.Series(np.asarray(cell_types)).astype(str).to_numpy()
    ok = np.isfinite(delta_norm) & np.isfinite(v_norm) & (delta_norm > 0) & (v_norm > 0)
    if not ok.any():
        return message_figure("No cells with both Δz and a velocity.", title="‖Δz‖ vs ‖v_z‖")
    idx = np.flatnonzero(ok)[subsample_index(int(ok.sum()), max_points, seed)]
    fig = go.Figure()
    scatter = points_trace(len(idx))
    for name, colour in category_colours(types[idx]).items():
        m = idx[types[idx] == name]
        fig.add_trace(scatter(x=v_norm[m], y=delta_norm[m], mode="markers", name=name,
                              marker=dict(size=4, color=colour, opacity=0.6)))
    lo = float(min(v_norm[ok].min(), delta_norm[ok].min()))
    hi = float(max(v_norm[ok].max(), delta_norm[ok].max()))
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="‖Δz‖ = ‖v_z‖",
                             line=dict(color="black", dash="dot", width=1)))
    fig.update_xaxes(type="log", title_text="‖v_z‖ (latent units)")
    fig.update_yaxes(type="log", title_text="‖Δz‖ (latent units)")
    fig.update_layout(legend=dict(itemsizing="constant"))
    return apply_style(fig, title="Length of the predicted shift against velocity length", height=480)
