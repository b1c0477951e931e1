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


def _full_log_labels(axis) -> None:
    # Without a tick format plotly labels the ticks inside a decade by their first digit only, so 0.4-1
    # reads "4 5 6 ... 9 1"; "~g" writes each as its value (0.4, 0.5, ..., 1).
    # Axes with their own decade ticks (dtick=1, e.g. 10^-5 in power format) never get the digit labels.
    if axis.type == "log" and not axis.tickformat and axis.dtick is None:
        axis.tickformat = "~g"


def apply_style(fig: go.Figure, title: str | None = None, height: int | None = None) -> go.Figure:
    """Give ``fig`` the publication template (and a title); returns the same figure for chaining. Call it
    after the axes' types are set: log axes get full tick labels."""
    fig.update_layout(template=_TEMPLATE_NAME)
    fig.for_each_xaxis(_full_log_labels)
    fig.for_each_yaxis(_full_log_labels)
    if title is not None:
        fig.update_layout(title_text=title)
    if height is not None:
        fig.update_layout(height=height)
    return fig


# Past eight categories Okabe-Ito would repeat (two cell types in one colour); then 24 + 24 distinct
# colours from plotly's Dark24 and Light24, not colour-blind safe but never the same twice up to 48.
def _long_palette() -> list[str]:
    from plotly.colors import qualitative

    seen, out = set(), []
    for colour in qualitative.Dark24 + qualitative.Light24:
        if colour.upper() not in seen:
            seen.add(colour.upper())
            out.append(colour)
    return out


LONG_PALETTE = _long_palette()


def palette(n: int) -> list[str]:
    """``n`` colours: Okabe-Ito up to eight, a longer qualitative palette beyond (cycling past its end)."""
    colours = OKABE_ITO if n <= len(OKABE_ITO) else LONG_PALETTE
    return [colours[i % len(colours)] for i in range(n)]


def category_colours(categories) -> dict:
    """A stable colour per category, in sorted order; distinct colours for up to 48 categories."""
    ordered = sorted({str(c) for c in categories})
    return dict(zip(ordered, palette(len(ordered))))


def faint(hex_colour: str, alpha: float = 0.25) -> str:
    """The same colour with transparency, for raw curves drawn behind their smoothed version."""
    h = hex_colour.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def axis_ref(axis) -> str:
    """How traces, annotations and ``matches`` name a subplot's axis: "xaxis3" -> "x3"."""
    return axis.plotly_name.replace("axis", "")


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
