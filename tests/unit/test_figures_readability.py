"""Figures a reader can read: full tick labels on log axes, no repeated colours up to 48 categories, and
smoothing that does not lag a short run."""

import numpy as np
import plotly.graph_objects as go

from core.figures.style import OKABE_ITO, apply_style, category_colours, palette
from core.figures.training import default_smoothing, ema, loss_curves


def test_log_axes_label_every_tick_with_its_value():
    fig = go.Figure(go.Scatter(x=[0, 1, 2], y=[0.4, 0.7, 1.0]))
    fig.update_yaxes(type="log")
    apply_style(fig)
    assert fig.layout.yaxis.tickformat == "~g"  # not plotly's leading digit "4 5 6 ... 9 1"
    linear = apply_style(go.Figure(go.Scatter(x=[0, 1], y=[0.4, 1.0])))
    assert linear.layout.yaxis.tickformat is None
    decades = go.Figure(go.Scatter(x=[0, 1], y=[1e-6, 1e-2]))
    decades.update_yaxes(type="log", dtick=1, exponentformat="power")
    assert apply_style(decades).layout.yaxis.tickformat is None  # keeps its 10^-6 labels


def test_loss_curves_on_a_log_axis_get_full_labels():
    import pandas as pd

    metrics = pd.DataFrame({"split": "train", "step": range(10), "loss": np.linspace(1.0, 0.4, 10)})
    assert loss_curves(metrics, log_y=True).layout.yaxis.tickformat == "~g"


def test_palettes_do_not_repeat_beyond_eight_categories():
    assert palette(8) == OKABE_ITO
    for n in (9, 12, 30, 48):
        colours = palette(n)
        assert len({c.upper() for c in colours}) == n, n
    colours = category_colours([f"type {i}" for i in range(12)])
    assert len(set(colours.values())) == 12


def test_default_smoothing_keeps_the_lag_near_five_percent_of_the_run():
    assert default_smoothing(10) == 0.0 and default_smoothing(None) == 0.0
    assert default_smoothing(85) == 0.76 and default_smoothing(10_000) == 0.99
    # a step change at step 40 of an 85-step run: the smoothed curve is past half way within 5 steps
    x = np.r_[np.zeros(40), np.ones(45)]
    smoothed = ema(x, default_smoothing(85))
    assert smoothed[44] > 0.5
    assert ema(x, 0.9)[44] < 0.5  # the old fixed 0.9 was still below half way


def test_delta_z_arrows_are_drawn_on_top_of_v_z_and_narrower():
    from core.figures.velocity import arrows_figure

    rng = np.random.default_rng(0)
    coords = rng.normal(size=(400, 2))
    same = rng.normal(size=(400, 2))  # Δz exactly along v_z: the case where one hid the other
    for mode in ("grid", "cells"):
        fig = arrows_figure(coords, {"Δz": same, "v_z": same}, mode=mode, n_cells=100)
        arrows = [t for t in fig.data if t.name in ("Δz", "v_z")]
        assert [t.name for t in arrows] == ["v_z", "Δz"]  # later traces are drawn over earlier ones
        v_z, delta_z = arrows
        assert v_z.line.width > delta_z.line.width and v_z.opacity < 1 and delta_z.opacity == 1


def test_composite_gain_is_explained_only_when_it_is_one_by_construction():
    from core.figures.mhc import composite_gain_figure

    doubly = np.stack([np.eye(4)[[1, 0, 3, 2]] * 0.6 + 0.1] * 3)
    fig = composite_gain_figure({"h_res": doubly, "step": 5})
    assert fig.layout.title.text == "Composite gain at step 5: 1 by construction"
    unbalanced = doubly * np.array([1.5, 0.5, 1.0, 1.0])[None, None, :]  # column sums no longer 1
    fig = composite_gain_figure({"h_res": unbalanced, "step": 5})
    assert fig.layout.title.text == "Composite gain over depth at step 5" and not fig.layout.annotations
