"""Figure builders return the numbers they were given, in the right traces, with labelled axes."""

import itertools

import numpy as np
import pandas as pd
import pytest

from core.figures import arrows, compare, mhc, style, training, velocity
from core.figures.run import per_cell_alignment


def _train_metrics(n=60, seed=0, with_velocity=True):
    rng = np.random.default_rng(seed)
    rows = pd.DataFrame({
        "split": "train", "step": np.arange(n), "epoch": np.arange(n) // 20,
        "loss": 1.0 + rng.random(n), "dist_loss": 0.8 + rng.random(n), "grad_norm": 0.5 + rng.random(n),
    })
    if with_velocity:
        rows["vel_loss"] = rng.random(n)
        rows["cos_similarity"] = rng.uniform(-1, 1, n)
        rows["lambda_t"] = np.minimum(1.0, np.arange(n) / 20)
    val = pd.DataFrame({"split": "val", "step": [19, 39, 59], "epoch": [0, 1, 2],
                        "val_loss": [1.5, 1.2, 1.1]})
    return pd.concat([rows, val], ignore_index=True)


def _birkhoff(n, weights, seed=0):
    """A doubly stochastic matrix as a convex combination of permutation matrices (Birkhoff-von Neumann),
    independent of any Sinkhorn code."""
    perms = list(itertools.permutations(range(n)))
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(perms), size=len(weights), replace=False)
    return sum(w * np.eye(n)[list(perms[c])] for w, c in zip(weights, chosen))


# ---------------------------------------------------------------------------------------------- style


def test_category_colours_are_okabe_ito_in_sorted_order():
    colours = style.category_colours(["sham", "burn", "burn"])
    assert colours == {"burn": style.OKABE_ITO[0], "sham": style.OKABE_ITO[1]}


def test_faint_keeps_rgb_and_sets_alpha():
    assert style.faint("#0072B2", 0.25) == "rgba(0,114,178,0.25)"


# ---------------------------------------------------------------------------------------------- training


def test_ema_matches_hand_computed_bias_corrected_values():
    # w=0.5: s=[0.5, 1.25, 2.125], normaliser=[0.5, 0.75, 0.875]
    np.testing.assert_allclose(training.ema([1.0, 2.0, 3.0], 0.5), [1.0, 1.25 / 0.75, 2.125 / 0.875])


def test_ema_carries_over_nan_steps():
    out = training.ema([1.0, np.nan, 1.0], 0.9)
    np.testing.assert_allclose(out, [1.0, 1.0, 1.0])


def test_loss_curves_draw_raw_behind_smoothed_and_validation_markers():
    metrics = _train_metrics()
    fig = training.loss_curves(metrics, log_y=True, smoothing=0.8)
    train = metrics[metrics["split"] == "train"]
    raw = next(t for t in fig.data if t.name == "train total (raw)")
    smooth = next(t for t in fig.data if t.name == "train total")
    np.testing.assert_allclose(raw.y, train["loss"])
    np.testing.assert_allclose(smooth.y, training.ema(train["loss"], 0.8))
    assert "rgba" in raw.line.color and smooth.line.width > raw.line.width
    assert {t.name for t in fig.data} >= {"train distributional", "train velocity", "validation total"}
    assert fig.layout.yaxis.type == "log"
    assert fig.layout.xaxis.title.text == "training step" and "loss" in fig.layout.yaxis.title.text


def test_velocity_curves_say_so_when_velocity_is_off():
    metrics = _train_metrics(with_velocity=False)
    figs = training.training_figures(metrics)
    assert "off" in figs["lambda_t"].layout.annotations[0].text
    assert "off" in figs["cos_delta_z_v_z"].layout.annotations[0].text
    np.testing.assert_allclose(figs["grad_norm"].data[0].y, metrics["grad_norm"].dropna())


def test_lambda_curve_plots_lambda_t_over_steps():
    metrics = _train_metrics()
    fig = training.lambda_curve(metrics)
    np.testing.assert_allclose(fig.data[0].y, np.minimum(1.0, np.arange(60) / 20))


# ---------------------------------------------------------------------------------------------- mHC


def test_sum_errors_of_a_hand_matrix():
    h = np.array([[[0.5, 0.5], [0.2, 0.7]]])  # rows sum to 1.0 and 0.9; columns to 0.7 and 1.2
    row, col = mhc.sum_errors(h)
    np.testing.assert_allclose(row, [0.1])
    np.testing.assert_allclose(col, [0.3])


def test_composite_gain_of_doubly_stochastic_layers_is_one():
    h = np.stack([_birkhoff(4, [0.5, 0.3, 0.2], seed=s) for s in range(6)])
    forward, backward = mhc.composite_gains(h)
    np.testing.assert_allclose(forward, 1.0, atol=1e-12)
    np.testing.assert_allclose(backward, 1.0, atol=1e-12)


def test_composite_gain_grows_geometrically_for_an_unconstrained_mixing():
    h = np.stack([np.diag([2.0, 0.5])] * 3)
    forward, backward = mhc.composite_gains(h)
    np.testing.assert_allclose(forward, [2.0, 4.0, 8.0])
    np.testing.assert_allclose(backward, [2.0, 4.0, 8.0])
    row_only = np.stack([np.array([[1.0, 1.0], [0.0, 0.0]])] * 2)  # rows sum to 2 and 0, columns to 1
    forward, backward = mhc.composite_gains(row_only)
    np.testing.assert_allclose(forward, [2.0, 2.0])
    np.testing.assert_allclose(backward, [1.0, 1.0])


def _snapshot(step=100, layers=(0, 2, 3)):
    h = np.stack([_birkhoff(4, [0.7, 0.2, 0.1], seed=i) for i in range(len(layers))])
    rng = np.random.default_rng(step)
    return {"h_res": h, "h_pre": rng.random((len(layers), 4)), "h_post": 2 * rng.random((len(layers), 4)),
            "layer_indices": np.array(layers), "step": step}


def test_h_res_heatmaps_show_every_layer_with_its_values():
    snap = _snapshot()
    fig = mhc.h_res_heatmaps(snap)
    heatmaps = [t for t in fig.data if t.type == "heatmap"]
    assert len(heatmaps) == 3
    for trace, matrix in zip(heatmaps, snap["h_res"]):
        np.testing.assert_allclose(np.asarray(trace.z), matrix)
        assert trace.texttemplate == "%{text:.2f}" and trace.zmin == 0 and trace.zmax == 1
    assert [a.text for a in fig.layout.annotations] == ["layer 0", "layer 2", "layer 3"]
    assert "step 100" in fig.layout.title.text


def test_h_pre_post_bars_have_one_bar_group_per_stream():
    snap = _snapshot()
    fig = mhc.h_pre_post_bars(snap)
    pre = [t for t in fig.data if t.xaxis == "x"]
    assert len(pre) == 4
    np.testing.assert_allclose(pre[2].y, snap["h_pre"][:, 2])


def test_sum_error_over_steps_takes_the_worst_layer():
    early = _snapshot(step=0)
    late = _snapshot(step=50)
    late["h_res"] = late["h_res"].copy()
    late["h_res"][1, 0, 0] += 0.01  # row 0 and column 0 of layer 1 are now off by 0.01
    fig = mhc.sum_error_over_steps([early, late])
    rows = fig.data[0]
    assert list(rows.x) == [0, 50]
    assert rows.y[0] == pytest.approx(mhc.ERROR_FLOOR, rel=1, abs=1e-12)
    assert rows.y[1] == pytest.approx(0.01)


def test_mhc_figures_without_snapshots_explain_why():
    figs = mhc.mhc_figures([])
    assert "mHC off" in figs["h_res"].layout.annotations[0].text


# ---------------------------------------------------------------------------------------------- arrows


def test_projected_arrows_follow_the_latent_direction_on_a_linear_embedding():
    rng = np.random.default_rng(0)
    latent = rng.normal(size=(2000, 5))
    coords = latent[:, :2] * 3.0  # the picture is a scaled copy of the first two latent axes
    direction = np.zeros((2000, 5))
    direction[:, 1] = 1.0  # every cell heads along latent axis 1 = picture's y
    drawn = arrows.project_to_2d(latent, direction, coords)
    angle = np.degrees(np.arctan2(drawn[:, 1], drawn[:, 0]))
    assert np.median(np.abs(angle - 90)) < 15
    assert (drawn[:, 1] > 0).mean() > 0.95


def test_zero_vectors_get_zero_arrows_and_rows_select_cells():
    rng = np.random.default_rng(1)
    latent = rng.normal(size=(300, 4))
    coords = latent[:, :2]
    vectors = rng.normal(size=(300, 4))
    vectors[:10] = 0
    full = arrows.project_to_2d(latent, vectors, coords)
    np.testing.assert_array_equal(full[:10], 0)
    rows = np.array([5, 50, 120])
    part = arrows.project_to_2d(latent, vectors[rows], coords, rows=rows)
    np.testing.assert_allclose(part, full[rows], rtol=1e-5, atol=1e-6)


def test_latent_neighbours_are_scikit_learns_brute_force_without_the_cell_itself():
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(3)
    latent = rng.normal(size=(700, 6)).astype(np.float32)
    latent[1] = latent[0]  # a duplicated cell: its twin is its nearest neighbour, never itself
    got = arrows.latent_neighbours(latent, n_neighbors=12)
    assert got.shape == (700, 12)
    assert not (got == np.arange(700)[:, None]).any()
    assert got[0, 0] == 1 and got[1, 0] == 0
    expected = NearestNeighbors(n_neighbors=12, algorithm="brute").fit(latent).kneighbors(return_distance=False)
    overlap = np.mean([len(set(a) & set(b)) for a, b in zip(got, expected)]) / 12
    assert overlap > 0.999  # the same sets up to float32 ties
    assert arrows.latent_neighbours(latent[:5]).shape == (5, 4)  # fewer cells than neighbours: all the others
    assert arrows.latent_neighbours(latent[:1]).shape == (1, 0)


def test_grid_average_is_the_gaussian_kernel_mean_at_every_grid_point():
    rng = np.random.default_rng(4)
    coords, field = rng.normal(size=(60, 2)), rng.normal(size=(60, 2))
    xs, ys, u, v = arrows.grid_average(coords, field, grid_size=7, min_density=0.0)
    step = np.array([xs[1] - xs[0], ys[1] - ys[0]])
    for row, y in enumerate(ys):
        for col, x in enumerate(xs):
            w = np.exp(-0.5 * (((np.array([x, y]) - coords) / step) ** 2).sum(1))  # the 2-D kernel, unfactored
            np.testing.assert_allclose([u[row, col], v[row, col]], w @ field / w.sum(), rtol=1e-10)


def test_grid_average_of_a_constant_field_is_that_constant():
    rng = np.random.default_rng(2)
    coords = rng.uniform(0, 10, size=(3000, 2))
    field = np.tile([0.3, -0.2], (3000, 1))
    xs, ys, u, v = arrows.grid_average(coords, field, grid_size=12)
    occupied = np.isfinite(u)
    assert occupied.mean() > 0.8
    np.testing.assert_allclose(u[occupied], 0.3)
    np.testing.assert_allclose(v[occupied], -0.2)


def test_arrows_figure_draws_both_fields_in_their_colours():
    rng = np.random.default_rng(3)
    coords = rng.normal(size=(500, 2))
    field = {"Δz": rng.normal(size=(500, 2)), "v_z": rng.normal(size=(500, 2))}
    for mode in ("grid", "cells"):
        fig = velocity.arrows_figure(coords, field, mode=mode, n_cells=100)
        named = {t.name: t for t in fig.data if t.name in field}
        assert named["Δz"].line.color == style.ROLE_COLOURS["delta_z"]
        assert named["v_z"].line.color == style.ROLE_COLOURS["v_z"]
        assert "(a.u.)" in fig.layout.xaxis.title.text


# ---------------------------------------------------------------------------------------------- velocity


def test_per_cell_alignment_on_hand_vectors():
    delta = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [0.0, 0.0]])
    v = np.array([[3.0, 0.0], [1.0, 0.0], [-1.0, -1.0], [1.0, 0.0]])
    cos, dn, vn = per_cell_alignment(delta, v)
    np.testing.assert_allclose(cos[:3], [1.0, 0.0, -1.0])
    assert np.isnan(cos[3])  # a zero shift has no direction
    np.testing.assert_allclose(dn, [1.0, 2.0, np.sqrt(2), 0.0])
    np.testing.assert_allclose(vn, [3.0, 1.0, np.sqrt(2), 1.0])


def test_cos_histograms_have_one_panel_per_cell_type_with_its_median():
    cos = np.array([0.9, 0.8, 0.7, -0.5, -0.1, np.nan])
    types = np.array(["fib", "fib", "fib", "mac", "mac", "mac"])
    fig = velocity.cos_histograms(cos, types)
    assert [len(t.x) for t in fig.data] == [3, 2]
    titles = [a.text for a in fig.layout.annotations if a.text]
    assert titles == ["fib (n=3, median +0.80)", "mac (n=2, median -0.30)"]
    assert [(s.x0, s.xref) for s in fig.layout.shapes] == [(pytest.approx(0.8), "x"), (pytest.approx(-0.3), "x2")]


def test_arrow_paths_put_the_tip_at_the_scaled_vector_with_symmetric_barbs():
    xs, ys = velocity.arrow_paths([1.0], [2.0], [3.0], [4.0], scale=0.5, head=0.2)
    # tail, tip, gap, left barb, tip, right barb, gap
    np.testing.assert_allclose([xs[0], ys[0], xs[1], ys[1]], [1.0, 2.0, 2.5, 4.0])
    assert np.isnan(xs[2]) and np.isnan(xs[6])
    tip = np.array([2.5, 4.0])
    left, right = np.array([xs[3], ys[3]]), np.array([xs[5], ys[5]])
    np.testing.assert_allclose(np.linalg.norm(left - tip), 0.2 * 2.5)  # shaft length 0.5 * 5
    np.testing.assert_allclose(np.linalg.norm(right - tip), 0.2 * 2.5)
    shaft = np.array([1.5, 2.0]) / 2.5
    back_cos = [np.dot((b - tip) / 0.5, -shaft) for b in (left, right)]
    np.testing.assert_allclose(back_cos, np.cos(np.pi / 9))


def test_norm_scatter_keeps_cells_with_both_vectors_and_draws_the_identity():
    fig = velocity.norm_scatter(np.array([1.0, 2.0, 0.0]), np.array([2.0, 2.0, 1.0]), ["a", "a", "b"])
    points = [t for t in fig.data if t.mode == "markers"]
    assert sum(len(t.x) for t in points) == 2
    assert fig.layout.xaxis.type == "log" and "latent units" in fig.layout.yaxis.title.text


def test_embedding_scatter_colours_categories_and_numbers():
    coords = np.arange(20.0).reshape(10, 2)
    fig = velocity.embedding_scatter(coords, pd.Categorical(["b", "a"] * 5), "condition")
    assert sorted(t.name for t in fig.data) == ["a", "b"]
    assert sum(len(t.x) for t in fig.data) == 10
    fig = velocity.embedding_scatter(coords, np.linspace(0, 1, 10), "latent time")
    np.testing.assert_allclose(fig.data[0].marker.color, np.linspace(0, 1, 10))


def test_confidence_histogram_marks_the_threshold_and_fraction_kept():
    fig = velocity.confidence_histogram(np.array([0.1, 0.2, 0.6, 0.9]), min_confidence=0.5)
    assert "50% of cells kept" in fig.layout.annotations[0].text


# ---------------------------------------------------------------------------------------------- compare


CONFIGS = {
    "lora-s0": {"model": {"kwargs": {"use_mhc": False, "lora": {"r": 8}}}, "training": {"seed": 0},
                "run": {"name": "lora-s0"}},
    "lora-s1": {"model": {"kwargs": {"use_mhc": False, "lora": {"r": 8}}}, "training": {"seed": 1},
                "run": {"name": "lora-s1"}},
    "mhc-s0": {"model": {"kwargs": {"use_mhc": True, "lora": {"r": 8}}}, "training": {"seed": 0},
               "run": {"name": "mhc-s0"}},
}


def test_config_diff_keeps_only_keys_that_differ():
    table = compare.config_diff(CONFIGS)
    assert list(table.columns) == ["model.kwargs.use_mhc", "training.seed"]
    assert table.loc["mhc-s0", "model.kwargs.use_mhc"] == "True"


def test_runs_differing_only_by_seed_form_one_configuration():
    groups = compare.group_by_configuration(CONFIGS)
    assert groups == {"use_mhc=False": ["lora-s0", "lora-s1"], "use_mhc=True": ["mhc-s0"]}


def test_seed_band_is_mean_and_sample_sd_of_the_smoothed_curves():
    metrics = {name: _train_metrics(seed=i) for i, name in enumerate(CONFIGS)}
    groups = compare.group_by_configuration(CONFIGS)
    fig = compare.seed_band_curves(metrics, groups, "loss", smoothing=0.5)
    smoothed = np.stack([training.ema(metrics[n].query("split == 'train'")["loss"], 0.5)
                         for n in ("lora-s0", "lora-s1")])
    mean_line = next(t for t in fig.data if t.name.startswith("use_mhc=False (n="))
    band = next(t for t in fig.data if t.name == "use_mhc=False ± s.d.")
    np.testing.assert_allclose(mean_line.y, smoothed.mean(0))
    np.testing.assert_allclose(np.asarray(band.y)[:60], smoothed.mean(0) + smoothed.std(0, ddof=1))
    assert "n=2 seeds" in mean_line.name


def test_stability_figure_shows_mean_and_each_seed():
    from core.evaluation import stability_summary

    metrics = {name: _train_metrics(seed=i) for i, name in enumerate(CONFIGS)}
    stability = pd.DataFrame({n: stability_summary(m) for n, m in metrics.items()}).T
    fig = compare.stability_figure(stability, compare.group_by_configuration(CONFIGS))
    bar = next(t for t in fig.data if t.type == "bar" and t.name == "use_mhc=False")
    expected = stability.loc[["lora-s0", "lora-s1"], "grad_norm_p95"].astype(float)
    assert bar.y[0] == pytest.approx(expected.mean())
    assert bar.error_y.array[0] == pytest.approx(expected.std(ddof=1))


def test_overlaid_curves_draw_one_smoothed_line_per_run():
    metrics = {name: _train_metrics(seed=i) for i, name in enumerate(CONFIGS)}
    fig = compare.overlaid_curves(metrics, "grad_norm", smoothing=0.0)
    lines = [t for t in fig.data if t.showlegend is not False]
    assert [t.name for t in lines] == list(CONFIGS)
    np.testing.assert_allclose(lines[1].y, metrics["lora-s1"].query("split == 'train'")["grad_norm"])
    fig = compare.overlaid_curves(metrics, "val_loss")
    np.testing.assert_allclose(fig.data[0].y, [1.5, 1.2, 1.1])


def test_small_scatters_are_svg_and_large_ones_webgl():
    # One WebGL context per figure is slow where the browser renders in software; SVG is quick below 5,000 points.
    from core.figures.velocity import WEBGL_MIN_POINTS, embedding_scatter, norm_scatter

    rng = np.random.default_rng(0)
    small = norm_scatter(rng.uniform(0.1, 2, 900), rng.uniform(0.1, 2, 900), ["a"] * 450 + ["b"] * 450)
    assert {t.type for t in small.data} == {"scatter"}
    n = WEBGL_MIN_POINTS
    for count, kind in ((n - 1, "scatter"), (n, "scattergl")):
        fig = embedding_scatter(rng.normal(size=(count, 2)), pd.Series(["x"] * count), "label")
        assert [t.type for t in fig.data] == [kind]


def test_embedding_scatter_draws_a_fixed_sample_above_its_cap_and_says_so():
    from core.figures.velocity import MAX_SCATTER_POINTS, embedding_scatter

    rng = np.random.default_rng(4)
    n = MAX_SCATTER_POINTS + 5_000
    coords = rng.normal(size=(n, 2))
    kinds = pd.Series(rng.choice(["a", "b", "c"], n))
    fig = embedding_scatter(coords, kinds, "kind")
    assert fig.layout.title.text == f"UMAP coloured by kind ({MAX_SCATTER_POINTS:,} of {n:,} cells shown)"
    drawn = np.concatenate([np.column_stack([t.x, t.y]) for t in fig.data])
    assert len(drawn) == MAX_SCATTER_POINTS and {t.type for t in fig.data} == {"scattergl"}
    # each drawn marker is one of the cells, at its own place and under its own category
    where = {tuple(xy): k for xy, k in zip(coords, kinds)}
    assert all(where[(x, y)] == t.name for t in fig.data for x, y in zip(t.x, t.y))
    assert len({tuple(xy) for xy in drawn}) == MAX_SCATTER_POINTS
    again = embedding_scatter(coords, kinds, "kind")
    np.testing.assert_array_equal(again.data[0].x, fig.data[0].x)  # the same sample every time
    # the 12,000-cell demo size is drawn whole
    whole = embedding_scatter(coords[:12_000], kinds[:12_000], "kind")
    assert whole.layout.title.text == "UMAP coloured by kind" and sum(len(t.x) for t in whole.data) == 12_000
