"""The velocity stream view: the gridded field is the Gaussian-weighted mean of the cells' arrows (checked by hand
on two cells), streamlines follow the field (straight for a uniform one, circles for a rotation), and the
figure draws each condition's own field in its own panel, cells coloured on one shared scale."""

import numpy as np
import pytest

from core.figures import arrows, stream


def test_gridded_field_is_the_hand_computed_kernel_average_of_two_cells():
    coords = np.array([[0.0, 0.0], [1.0, 1.0]])
    field = np.array([[1.0, 0.0], [0.0, 1.0]])
    xs, ys, u, v = arrows.grid_average(coords, field, grid_size=2, min_density=0.0)
    # grid: the cells' extent padded by 2% on each side -> -0.02 and 1.02; kernel width = one grid step, 1.04
    np.testing.assert_allclose(xs, [-0.02, 1.02])
    np.testing.assert_allclose(ys, [-0.02, 1.02])
    near = np.exp(-0.5 * 2 * 0.02 ** 2 / 1.04 ** 2)          # grid corner to the cell beside it: 0.99963
    far = np.exp(-0.5 * 2 * 1.02 ** 2 / 1.04 ** 2)           # to the cell across the diagonal: 0.38216
    side = np.exp(-0.5 * (1.02 ** 2 + 0.02 ** 2) / 1.04 ** 2)  # off-diagonal corners, equally far from both
    assert near == pytest.approx(0.99963, abs=1e-5) and far == pytest.approx(0.38216, abs=1e-5)
    # u [row = y, column = x]: at (-0.02, -0.02) the cell at the origin dominates
    np.testing.assert_allclose(u, [[near / (near + far), side / (2 * side)], [side / (2 * side), far / (near + far)]])
    np.testing.assert_allclose(v, [[far / (near + far), 0.5], [0.5, near / (near + far)]])
    assert u[0, 0] == pytest.approx(0.72343, abs=1e-5)


def test_grid_bounds_fix_the_grid_whatever_cells_are_given():
    coords = np.array([[0.2, 0.3], [0.4, 0.5]])
    xs, ys, _, _ = arrows.grid_average(coords, np.ones((2, 2)), grid_size=3, bounds=([0.0, 0.0], [1.0, 2.0]))
    np.testing.assert_allclose(xs, [-0.02, 0.5, 1.02])
    np.testing.assert_allclose(ys, [-0.04, 1.0, 2.04])


def test_streamlines_of_a_uniform_field_run_straight_along_it():
    xs = ys = np.linspace(0, 1, 20)
    right = stream.streamlines(xs, ys, np.ones((20, 20)), np.zeros((20, 20)))
    assert len(right) >= 5
    for line in right:
        np.testing.assert_allclose(line[:, 1], line[0, 1], atol=1e-9)  # horizontal
        assert (np.diff(line[:, 0]) > 0).all()                          # in the field's direction
    left = stream.streamlines(xs, ys, -np.ones((20, 20)), np.zeros((20, 20)))
    assert all((np.diff(line[:, 0]) < 0).all() for line in left)


def test_streamlines_of_a_rotation_are_circles_and_empty_cells_stop_them():
    xs = ys = np.linspace(-1, 1, 30)
    gx, gy = np.meshgrid(xs, ys)
    lines = stream.streamlines(xs, ys, -gy, gx)
    assert lines
    for line in lines:
        radius = np.hypot(line[:, 0], line[:, 1])
        assert np.ptp(radius) < 0.05 * max(radius.mean(), 0.2)
    nan = np.full((30, 30), np.nan)
    assert stream.streamlines(xs, ys, nan, nan) == []


def test_stream_figure_draws_each_conditions_own_field_on_one_colour_scale():
    rng = np.random.default_rng(0)
    coords = rng.uniform(0, 10, size=(2000, 2))
    groups = np.where(np.arange(2000) < 1000, "sham", "burn")
    field = np.where((groups == "sham")[:, None], [1.0, 0.0], [-1.0, 0.0])  # sham flows right, burn left
    expression = rng.gamma(2.0, size=2000)
    fig = stream.stream_figure(coords, field, groups, expression, "Krt14 (X)", order=["sham", "burn"],
                               grid_size=20)
    assert [a.text for a in fig.layout.annotations] == ["sham (1,000 cells)", "burn (1,000 cells)"]
    cells = [t for t in fig.data if t.mode == "markers"]
    assert [t.xaxis for t in cells] == ["x", "x2"]
    assert {(t.marker.cmin, t.marker.cmax) for t in cells} == {(expression.min(), expression.max())}
    np.testing.assert_allclose(np.sort(np.concatenate([t.marker.color for t in cells])), np.sort(expression))
    lines = [t for t in fig.data if t.name == "velocity streamlines"]
    assert [t.xaxis for t in lines] == ["x", "x2"]
    for trace, sign in zip(lines, (1, -1)):
        steps = np.diff(np.asarray(trace.x, dtype=float))
        steps = steps[np.isfinite(steps)]
        assert (np.sign(steps) == sign).mean() > 0.99
