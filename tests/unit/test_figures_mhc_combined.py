"""The Inspect page's combined mHC figures hold the same values as the one-quantity figures they replace there, each
panel on its own axes: the step summary (sum error + composite gain), the drift at a step (ΔH_res grid above
ΔH_pre, ΔH_post) and the history over training (sum error, drift, gradient ratio on one step axis)."""

import numpy as np
import pandas as pd
import pytest

from core.evaluation.mhc_drift import mapping_drift
from core.figures.mhc import ERROR_FLOOR, step_summary_figure
from core.figures.mhc_drift import drift_at_step_figure
from core.figures.mhc_history import training_history_figure

PERMUTATION = np.eye(4)[[1, 0, 3, 2]]
DOUBLY = np.stack([PERMUTATION * 0.6 + 0.1, np.eye(4) * 0.4 + 0.15])  # both doubly stochastic


def _snapshots(layers: int = 2) -> list[dict]:
    start = {"step": 0, "layer_indices": np.arange(layers), "h_res": np.full((layers, 4, 4), 0.25),
             "h_pre": np.full((layers, 4), 0.5), "h_post": np.ones((layers, 4))}
    end = {**start, "step": 30, "h_res": np.resize(DOUBLY, (layers, 4, 4)),
           "h_pre": start["h_pre"] + 0.02 * np.arange(4), "h_post": start["h_post"] - 0.1 * np.eye(layers, 4)}
    return [start, end]


def test_step_summary_draws_the_sum_errors_left_and_the_gain_right_with_the_construction_note():
    off = DOUBLY.copy()
    off[1, 0, 0] += 0.01  # layer 1: row 0 sums to 1.01, column 0 to 1.01
    fig = step_summary_figure({"step": 7, "layer_indices": np.array([0, 1]), "h_res": off})
    bars = [t for t in fig.data if t.xaxis == "x"]
    np.testing.assert_allclose([b.y for b in bars], [[ERROR_FLOOR, 0.01], [ERROR_FLOOR, 0.01]], rtol=1e-9)
    forward, backward = [t.y for t in fig.data if t.xaxis == "x2"]
    # P_1 = H_1 is doubly stochastic. P_2 = H_2 H_1: its row sums are H_2's (1.01 at most); its column sums
    # are H_2's column sums times H_1, 1 + 0.01 H_1[0, j], at most 1 + 0.01 * 0.7
    np.testing.assert_allclose(forward, [1.0, 1.01], atol=1e-12)
    np.testing.assert_allclose(backward, [1.0, 1.007], atol=1e-12)
    assert fig.layout.yaxis.type == "log" and fig.layout.title.text.endswith("at step 7")
    # |gain - 1| = 1e-2 is past the 1e-3 of "by construction": no note, the gain is a measurement here
    assert "Composite gain over depth" in [a.text for a in fig.layout.annotations]
    on_manifold = step_summary_figure({"step": 7, "layer_indices": np.array([0, 1]), "h_res": DOUBLY})
    notes = {a.text: a for a in on_manifold.layout.annotations}
    assert "Composite gain over depth: 1 by construction" in notes
    note = next(a for a in notes.values() if "doubly stochastic" in a.text)
    assert (note.xref, note.yref) == ("x2 domain", "y2 domain")  # on the gain's panel, not the page


def test_drift_at_step_has_each_group_on_its_own_symmetric_scale():
    drift = mapping_drift(_snapshots())
    fig = drift_at_step_figure(drift)
    heatmaps = [t for t in fig.data if t.type == "heatmap"]
    assert len(heatmaps) == 4  # two layers of ΔH_res, then ΔH_pre and ΔH_post
    np.testing.assert_allclose([t.z for t in heatmaps[:2]], DOUBLY - 0.25, atol=1e-12)
    assert all((t.zmin, t.zmax) == pytest.approx((-0.45, 0.45)) for t in heatmaps[:2])
    np.testing.assert_allclose(heatmaps[2].z, [0.02 * np.arange(4)] * 2, atol=1e-12)
    np.testing.assert_allclose(heatmaps[3].z, -0.1 * np.eye(2, 4), atol=1e-12)
    assert all((t.zmin, t.zmax) == pytest.approx((-0.1, 0.1)) for t in heatmaps[2:])  # max(0.06, 0.1)
    shown = [t for t in heatmaps if t.showscale]
    assert len(shown) == 2  # one colour bar a group, beside its own rows
    assert shown[0].colorbar.y > shown[1].colorbar.y
    assert "largest |Δ| 0.45" in fig.layout.title.text and "largest |Δ| 0.1" in fig.layout.title.text


def test_drift_at_step_leaves_no_empty_panels_when_the_grid_is_not_full():
    fig = drift_at_step_figure(mapping_drift(_snapshots(layers=6)))
    titles = [a.text for a in fig.layout.annotations]
    assert titles == [f"layer {i}" for i in range(6)] + ["ΔH_pre (read-in)", "ΔH_post (write-out)"]
    axes = [name for name in fig.layout if name.startswith("xaxis")]
    assert len(axes) == 8  # six layers in a 4-wide grid (two cells unused, no axes there) and the pre/post row


def _metrics(layers: int = 2) -> pd.DataFrame:
    rows = [{"split": "train", "step": s, "grad_lora": 1e-3, **{f"grad_h_res_{k}": 1e-5 * (k + 1) * s
                                                               for k in range(layers)}} for s in (1, 10, 20, 30)]
    rows.append({"split": "val", "step": 30, "val_loss": 1.0})
    return pd.DataFrame(rows)


def test_training_history_puts_the_three_quantities_on_one_step_axis():
    snapshots = _snapshots()
    fig = training_history_figure(snapshots, mapping_drift(snapshots), _metrics())
    by_axis = {}
    for trace in fig.data:
        by_axis.setdefault(trace.xaxis, []).append(trace)
    assert sorted(by_axis) == ["x", "x2", "x3", "x4", "x5"]
    np.testing.assert_allclose(by_axis["x"][0].y, [ERROR_FLOOR, ERROR_FLOOR])  # on the manifold at both steps
    np.testing.assert_allclose([t.y for t in by_axis["x2"]], [[0, 0.45], [0, 0.3]], atol=1e-12)  # ΔH_res
    np.testing.assert_allclose([t.y for t in by_axis["x3"]], [[0, 0.06], [0, 0.06]], atol=1e-12)  # ΔH_pre
    np.testing.assert_allclose([t.y for t in by_axis["x4"]], [[0, 0.1], [0, 0.1]], atol=1e-12)  # ΔH_post
    np.testing.assert_allclose([t.y for t in by_axis["x5"]], [[0.01, 0.1, 0.2, 0.3], [0.02, 0.2, 0.4, 0.6]])
    assert all(fig.layout[f"xaxis{k}"].matches == "x" for k in range(2, 6))  # one zoom moves every panel
    assert fig.layout.yaxis3.matches == fig.layout.yaxis4.matches == "y2"  # the mappings' moves on one scale
    assert fig.layout.yaxis.type == fig.layout.yaxis5.type == "log"
    # one legend entry a layer, shared by its drift and gradient lines
    legend = [t.name for t in fig.data if t.showlegend is not False]
    assert legend == ["max |row sum − 1|", "max |column sum − 1|", "layer 0", "layer 1"]
    assert {t.legendgroup for t in by_axis["x5"]} == {"layer 0", "layer 1"}


def test_training_history_of_a_run_without_gradients_says_so_in_its_panel():
    snapshots = _snapshots()
    fig = training_history_figure(snapshots, mapping_drift(snapshots), _metrics()[["split", "step"]])
    note = next(a for a in fig.layout.annotations if "logged no mHC gradients" in a.text)
    assert (note.xref, note.yref) == ("x5 domain", "y5 domain")
    assert not any(len(t.x) for t in fig.data if t.xaxis == "x5")
