"""The publication look of every figure: readable in print, colour-blind safe, the same on screen and paper.

Colours follow Okabe & Ito (2008, "Color Universal Design"), distinguishable under the common forms of
colour blindness; continuous values use viridis (perceptually uniform, readable in grey-scale). Fonts are
sized for a figure printed at about 8-9 cm column width from the default export size (800 x 500 px at
scale 2). The app shows figures with ``theme=None`` so the screen matches the export.
"""

from __future__ import annotations

import copy

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio

# Okabe-Ito, reordered so the first colours are the most distinct on white (yellow last: weak on paper).
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442"]
GREY = "#9A9A9A"
SEQUENTIAL = "Viridis"
FONT = "Arial, Helvetica, sans-serif"
EXPORT_WIDTH = 800
EXPORT_HEIGHT = 500

# Fixed roles, so Δz and v_z (and train vs validation) keep their colours in every figure.
ROLE_COLOURS = {
    "delta_z": "#D55E00",
    "v_z": "#0072B2",
    "train": "#0072B2",
    "val": "#E69F00",
    "row": "#0072B2",
    "col": "#D55E00",
}

_TEMPLATE_NAME = "st_publication"


def _build_template() -> go.layout.Template:
    base = copy.deepcopy(pio.templates["simple_white"])
    axis = dict(
        showline=True, linecolor="black", linewidth=1, ticks="outside", tickcolor="black",
        mirror=False, showgrid=False, zeroline=False, title_font=dict(size=15), tickfont=dict(size=13),
    )
    base.layout.update(
        font=dict(family=FONT, size=14, color="black"),
        colorway=OKABE_ITO,
        xaxis=axis,
        yaxis=axis,
        legend=dict(bgcolor="rgba(255,255,255,0.8)", font=dict(size=12)),
        title=dict(font=dict(size=16), x=0.0, xanchor="left", xref="paper"),
        margin=dict(l=70, r=20, t=60, b=60),
        paper_bgcolor="white",
        plot_bgcolor="white",
        coloraxis=dict(colorscale=SEQUENTIAL),
    )
    return base


pio.templates[_TEMPLATE_NAME] = _build_template()


def apply_style(fig: go.Figure, title: str | None = None, height: int | None = None) -> go.Figure:
    """Give ``fig`` the publication template (and a title); returns the same figure for chaining."""
    fig.update_layout(template=_TEMPLATE_NAME)
    if title is not None:
        fig.update_layout(title_text=title)
    if height is not None:
        fig.update_layout(height=height)
    return fig


def category_colours(categories) -> dict:
    """A stable colour per category, in sorted order, cycling Okabe-Ito past eight categories."""
    ordered = sorted({str(c) for c in categories})
    return {c: OKABE_ITO[i % len(OKABE_ITO)] for i, c in enumerate(ordered)}


def faint(hex_colour: str, alpha: float = 0.25) -> str:
    """The same colour with transparency, for raw curves drawn behind their smoothed version."""
    h = hex_colour.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def message_figure(text: str, title: str | None = None) -> go.Figure:
    """An empty figure that says why there is nothing to plot (velocity off, no mHC, no metrics yet)."""
    fig = go.Figure()
    fig.add_annotation(text=text, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font=dict(size=15, color="#444444"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return apply_style(fig, title=title, height=300)


def subsample_index(n: int, max_points: int, seed: int = 0) -> np.ndarray:
    """Indices of at most ``max_points`` of ``n`` items, sorted, the same for the same seed."""
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))
