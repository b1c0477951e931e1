"""Velocity as streamlines over a 2-D embedding, one panel per condition (scvelo's ``velocity_embedding_stream``
look): where cells are heading, read as flow rather than as a forest of arrows.

Shapes:  N cells, G grid points per side.
    coords [N, 2]   the 2-D embedding (e.g. obsm["X_umap"])
    arrows [N, 2]   each cell's velocity already projected onto coords (``core.figures.arrows.project_to_2d``)

The field the lines follow is the grid average of the arrows (``core.figures.arrows.grid_average``: a Gaussian
kernel one grid step wide, NaN where there are no cells; scvelo's ``compute_velocity_on_grid`` does the same),
computed per condition on one grid over all cells, so the panels share their axes. The lines are integrated
through it by matplotlib's ``streamplot`` (the integrator scvelo draws with), on a figure that is never shown,
and drawn as plotly lines with one arrowhead each. Line length and spacing are display choices, not a
velocity magnitude.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.figures.arrows import grid_average
from core.figures.style import apply_style, message_figure, subsample_index

STREAM_COLOUR = "#222222"
MAX_POINTS_PER_PANEL = 15_000


def streamlines(xs: np.ndarray, ys: np.ndarray, u: np.ndarray, v: np.ndarray,
                density: float = 1.0) -> list[np.ndarray]:
    """Polylines [L_k, 2] through the field (u, v) [G, G] on the grid xs [G] × ys [G] (row = y). Grid points
    with NaN (no cells) stop a line."""
    from matplotlib.figure import Figure

    u = np.ma.masked_invalid(np.asarray(u, dtype=float))
    v = np.ma.masked_invalid(np.asarray(v, dtype=float))
    if u.mask.all() or not (np.abs(u.filled(0)) + np.abs(v.filled(0))).any():
        return []
    axes = Figure().add_subplot()
    lines = axes.streamplot(np.asarray(xs, float), np.asarray(ys, float), u, v, density=density,
                            broken_streamlines=True).lines
    # matplotlib >= 3.10 hands back one segment per line; older versions consecutive two-point segments
    polylines: list[list[np.ndarray]] = []
    for segment in lines.get_segments():
        if len(segment) == 2 and polylines and np.allclose(polylines[-1][-1], segment[0]):
            polylines[-1].append(segment[1])
        else:
            polylines.append(list(segment))
    out = []
    for points in map(np.asarray, polylines):
        moved = np.r_[True, (np.abs(np.diff(points, axis=0)) > 0).any(axis=1)]  # repeated points dropped
        if moved.sum() >= 3:
            out.append(points[moved])
    return out


def _line_traces(polylines: list[np.ndarray], extent: float) -> list[go.Scatter]:
    """All lines as one trace (NaN-separated) and their arrowheads (at each line's middle) as another."""
    from core.figures.velocity import arrow_paths

    if not polylines:
        return []
    gap = np.full((1, 2), np.nan)
    joined = np.concatenate([np.concatenate([p, gap]) for p in polylines])
    middles = [p[len(p) // 2] for p in polylines]
    heading = [p[len(p) // 2] - p[len(p) // 2 - 1] for p in polylines]
    start = np.array(middles) - np.array(heading)
    unit = np.array(heading) / np.maximum(np.linalg.norm(heading, axis=1, keepdims=True), 1e-12)
    hx, hy = arrow_paths(start[:, 0], start[:, 1], unit[:, 0], unit[:, 1], scale=0.02 * extent, head=1.0)
    keep = np.isnan(hx) | (np.arange(len(hx)) % 7 >= 3)  # only the barbs: the shaft is the line itself
    return [go.Scatter(x=joined[:, 0], y=joined[:, 1], mode="lines", line=dict(color=STREAM_COLOUR, width=1.1),
                       name="velocity streamlines", hoverinfo="skip", showlegend=False),
            go.Scatter(x=np.where(keep, hx, np.nan), y=np.where(keep, hy, np.nan), mode="lines",
                       line=dict(color=STREAM_COLOUR, width=1.1), hoverinfo="skip", showlegend=False)]


def stream_figure(coords: np.ndarray, arrows: np.ndarray, groups, colour_values, colour_name: str,
                  order: list[str] | None = None, grid_size: int = 25, density: float = 1.0,
                  min_density: float = 1.0, basis: str = "UMAP", seed: int = 0) -> go.Figure:
    """One panel per condition (``groups`` [N], e.g. sham and burn, in ``order``): that condition's cells
    coloured by ``colour_values`` [N] (numbers, e.g. a gene's expression, on one shared colour scale; or
    categories) under the streamlines of that condition's own velocity field. Grid points with less kernel
    weight than ``min_density`` times the median stop the lines (stricter than the arrows' 0.5, so lines do not
    run on far beyond the cells)."""
    from core.figures.velocity import cell_traces

    coords = np.asarray(coords, dtype=float)
    arrows = np.asarray(arrows, dtype=float)
    groups = pd.Series(np.asarray(groups)).astype(str)
    values = pd.Series(np.asarray(colour_values))
    names = [g for g in (order or sorted(groups.unique())) if (groups == g).any()]
    if not names:
        return message_figure("No cells to draw.", title="Velocity streamlines")
    lo, hi = coords.min(0), coords.max(0)
    extent = float((hi - lo).max()) or 1.0
    numeric = values.dtype.kind in "fiu" and values.nunique() > 20
    limits = (float(np.nanmin(values)), float(np.nanmax(values))) if numeric else None
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=[f"{n} ({(groups == n).sum():,} cells)"
                                                                 for n in names], horizontal_spacing=0.04)
    for col, name in enumerate(names, start=1):
        cells = np.flatnonzero(groups.to_numpy() == name)
        shown = cells[subsample_index(len(cells), MAX_POINTS_PER_PANEL, seed)]
        for trace in cell_traces(coords[shown], values.iloc[shown], colour_name, limits=limits,
                                 legend=col == 1, opacity=0.45):
            fig.add_trace(trace, row=1, col=col)
        xs, ys, u, v = grid_average(coords[cells], arrows[cells], grid_size, min_density, bounds=(lo, hi))
        for trace in _line_traces(streamlines(xs, ys, u, v, density), extent):
            fig.add_trace(trace, row=1, col=col)
        fig.update_xaxes(title_text=f"{basis} 1 (a.u.)", showticklabels=False, ticks="", row=1, col=col,
                         range=[lo[0], hi[0]])
        fig.update_yaxes(title_text=f"{basis} 2 (a.u.)" if col == 1 else None, showticklabels=False, ticks="",
                         row=1, col=col, range=[lo[1], hi[1]], scaleanchor=f"x{col if col > 1 else ''}")
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.12, x=0, xanchor="left", itemsizing="constant"))
    return apply_style(fig, title=f"Velocity streamlines on the {basis}, coloured by {colour_name}", height=520)
