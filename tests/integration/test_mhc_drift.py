"""How far mHC acted: drift of the mappings from their init (from snapshots) and the streams' divergence (from a
forward pass), hand-computed on small cases and measured on a real tiny LoRA-mHC run."""

import math

import numpy as np
import pytest
import torch

from core.evaluation.mhc_drift import (
    mapping_drift,
    mean_pairwise_cosine,
    relative_spread,
    run_mapping_drift,
    run_stream_divergence,
)
from core.evaluation.mhc_drift import stream_divergence as divergence_of
from core.figures.mhc_history import gradient_ratio_over_steps
from core.mhc.layer import apply_mhc_to_transformer, find_mhc_layers
from core.runs import read_metrics
from tests.integration.test_training import runs, small_path  # noqa: F401  (fixtures)
from tests.unit.test_mhc import C, inputs, tiny


def snapshot(step, h_res, h_pre, h_post, layers=(0, 1)):
    return {"step": step, "h_res": np.asarray(h_res, float), "h_pre": np.asarray(h_pre, float),
            "h_post": np.asarray(h_post, float), "layer_indices": np.asarray(layers)}


def test_drift_is_each_mapping_minus_the_first_snapshots():
    eye = np.eye(2)
    first = snapshot(0, [eye, eye], [[0.5, 0.5], [0.4, 0.6]], [[1.0, 1.0], [1.5, 0.5]])
    moved = snapshot(10, [[[0.9, 0.1], [0.1, 0.9]], eye], [[0.5, 0.5], [0.1, 0.9]], [[1.2, 0.7], [1.5, 0.5]])
    drift = mapping_drift([first, moved])
    assert drift["steps"].tolist() == [0, 10]
    np.testing.assert_allclose(drift["delta_h_res"][1, 0], [[-0.1, 0.1], [0.1, -0.1]])
    np.testing.assert_allclose(drift["final_max_abs_h_res"], [0.1, 0.0])
    np.testing.assert_allclose(drift["final_max_abs_h_pre"], [0.0, 0.3])
    np.testing.assert_allclose(drift["final_max_abs_h_post"], [0.3, 0.0])
    np.testing.assert_allclose(drift["max_abs_h_post"][0], [0.0, 0.0])  # the init has not moved from itself
    with pytest.raises(ValueError, match="at least one"):
        mapping_drift([])
    with pytest.raises(ValueError, match="other layers"):
        mapping_drift([first, snapshot(10, [eye], [[0.5, 0.5]], [[1.0, 1.0]], layers=(3,))])


def test_mean_pairwise_cosine_of_hand_made_streams():
    # pairs: (1,0)·(0,1) = 0, (1,0)·(1,1)/√2 = 1/√2, (0,1)·(1,1)/√2 = 1/√2 -> mean √2/3
    assert mean_pairwise_cosine([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]]) == pytest.approx(math.sqrt(2) / 3)
    # over tokens: the second token's streams are parallel (cosine 1): mean of √2/3 and 1
    streams = [[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [[1.0, 2.0], [2.0, 4.0], [0.5, 1.0]]]
    assert mean_pairwise_cosine(streams) == pytest.approx((math.sqrt(2) / 3 + 1) / 2)
    # (1,0) and (3,0): mean (2,0), deviations of norm 1 each -> spread 1/2, though the cosine is 1
    assert relative_spread([[[1.0, 0.0], [3.0, 0.0]]]) == pytest.approx(0.5)
    assert mean_pairwise_cosine([[[1.0, 0.0], [3.0, 0.0]]]) == pytest.approx(1.0)


def test_streams_differ_at_init_and_copies_would_not():
    model = apply_mhc_to_transformer(tiny("bert").eval(), C)
    ours = divergence_of(model, inputs_embeds=inputs())
    # the first layer receives (1 + p) h: parallel, spread rms(p) = sqrt((0.25 + 3 / 36) / 4) = 0.2887
    assert ours["mean_cosine"][0] == pytest.approx(1.0, abs=1e-12)
    assert ours["relative_spread"][0] == pytest.approx(math.sqrt((0.25 + 3 / 36) / 4), rel=1e-6)
    assert (1 - ours["mean_cosine"][1:] > 1e-8).all(), ours  # measured 2e-7 to 2e-6 on this tiny BERT
    with torch.no_grad():
        for layer in find_mhc_layers(model):  # the previous init: copies, H_post = 1
            layer.hc.b_post.zero_()
            layer.hc.expansion.fill_(1.0)
    copies = divergence_of(model, inputs_embeds=inputs())
    assert (1 - copies["mean_cosine"] < 1e-12).all() and (copies["relative_spread"] < 1e-6).all()


def test_a_real_lora_mhc_run_reports_drift_and_divergence(runs):  # noqa: F811
    drift = run_mapping_drift(runs["lora_mhc"])
    assert drift["steps"][0] == 0 and len(drift["steps"]) >= 3
    assert drift["final_max_abs_h_res"].max() > 0 and drift["final_max_abs_h_post"].max() > 0
    divergence = run_stream_divergence(runs["lora_mhc"], n_sets=4)
    assert set(divergence) == {"init", "trained"}
    for values in divergence.values():
        assert values["layer_indices"].tolist() == [0, 1] and values["mean_cosine"][0] == pytest.approx(1.0)
    assert divergence["init"]["mean_cosine"][1] < 1.0
    assert divergence["trained"]["mean_cosine"][1] != pytest.approx(divergence["init"]["mean_cosine"][1], abs=1e-9)
    with pytest.raises(ValueError, match="no mHC"):
        run_stream_divergence(runs["lora"])
    # step 1 and every snapshot step (5 here) log H_res's gradient per layer and LoRA's; every layer's is non-zero
    train = read_metrics(runs["lora_mhc"]).query("split == 'train'")
    logged = train[train["grad_lora"].notna()]
    assert list(logged["step"]) == [1, *range(5, int(train["step"].max()) + 1, 5)]
    train = logged
    assert (train["grad_lora"] > 0).all()
    assert (train[["grad_h_res_0", "grad_h_res_1"]] > 0).all().all()
    figure = gradient_ratio_over_steps(read_metrics(runs["lora_mhc"]))
    np.testing.assert_allclose(figure.data[1].y, train["grad_h_res_1"] / train["grad_lora"])
    assert "grad_lora" not in read_metrics(runs["lora"]).columns


def test_divergence_figure_draws_both_measures_for_init_and_trained():
    from core.figures.mhc_drift import stream_divergence_figure

    values = {"init": {"layer_indices": np.array([0, 1]), "mean_cosine": np.array([1.0, 0.9995]),
                       "relative_spread": np.array([0.29, 0.31])},
              "trained": {"layer_indices": np.array([0, 1]), "mean_cosine": np.array([1.0, 0.99]),
                          "relative_spread": np.array([0.29, 0.4])}}
    fig = stream_divergence_figure(values)
    bars = {(t.name, t.xaxis): list(t.y) for t in fig.data}
    assert bars[("trained", "x")] == [1.0, 0.99] and bars[("init", "x2")] == [0.29, 0.31]
    low, high = fig.layout.yaxis.range
    assert low < 0.99 < high == 1.0  # zoomed onto the cosines, which differ in their last digits
