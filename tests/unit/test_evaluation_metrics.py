"""Evaluation metrics and training-stability figures, on hand-computed inputs and independent libraries."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.spatial.distance import cdist
from scipy.stats import energy_distance as scipy_energy_distance
from scipy.stats import pearsonr

from core.evaluation import metrics, stability_summary
from core.evaluation.stability import loss_spikes
from core.runs import RunWriter, read_metrics

# --- energy distance ---------------------------------------------------------------------------------


def test_energy_distance_of_identical_sets_is_zero():
    cells = np.random.default_rng(0).normal(size=(50, 8))
    assert metrics.energy_distance(cells, cells.copy()) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    "x, y, expected",
    [
        # E|X-Y| = (3 + 2)/2 = 2.5, E|X-X'| = (0 + 1 + 1 + 0)/4 = 0.5, E|Y-Y'| = 0  ->  2.5 - 0.25 = 2.25
        ([[0.0], [1.0]], [[3.0]], 2.25),
        # E|X-Y| = (0 + 5)/2 = 2.5, E|X-X'| = (0 + 5 + 5 + 0)/4 = 2.5, E|Y-Y'| = 0  ->  2.5 - 1.25 = 1.25
        ([[0.0, 0.0], [3.0, 4.0]], [[0.0, 0.0]], 1.25),
    ],
)
def test_energy_distance_matches_closed_form_on_small_sets(x, y, expected):
    # geomloss floors every pairwise distance at 1e-4, hence the tolerance
    assert metrics.energy_distance(x, y) == pytest.approx(expected, abs=1e-4)


def test_energy_distance_matches_pairwise_distances_computed_with_scipy():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(60, 5)), rng.normal(loc=0.5, size=(40, 5))
    by_hand = cdist(x, y).mean() - 0.5 * cdist(x, x).mean() - 0.5 * cdist(y, y).mean()
    assert metrics.energy_distance(x, y) == pytest.approx(by_hand, abs=1e-5)
    from_torch = metrics.energy_distance(torch.tensor(x, dtype=torch.float32), y)
    assert from_torch == pytest.approx(by_hand, abs=1e-5)


def test_energy_distance_is_half_the_square_of_scipys_one_dimensional_energy_distance():
    rng = np.random.default_rng(2)
    u, v = rng.normal(size=70), rng.exponential(size=30)
    expected = scipy_energy_distance(u, v) ** 2 / 2
    assert metrics.energy_distance(u[:, None], v[:, None]) == pytest.approx(expected, rel=1e-4)


def test_energy_distance_subsample_is_seeded_and_unused_below_the_cap():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(300, 4)), rng.normal(size=(250, 4))
    full = metrics.energy_distance(x, y, max_cells=None)
    assert metrics.energy_distance(x, y, max_cells=300) == full
    first = metrics.energy_distance(x, y, max_cells=100, seed=7)
    assert metrics.energy_distance(x, y, max_cells=100, seed=7) == first
    assert first != full and first == pytest.approx(full, abs=0.05)


# --- mean shifts -------------------------------------------------------------------------------------

CONTROL = np.array([[0.0, 0.0, 0.0], [2.0, 2.0, 2.0]])  # mean (1, 1, 1)
SHIFT = np.array([1.0, 2.0, 3.0])


def test_pearson_delta_is_one_for_identical_and_minus_one_for_opposite_shifts():
    real = CONTROL + SHIFT
    assert metrics.pearson_delta(CONTROL + SHIFT, real, CONTROL) == pytest.approx(1.0)
    assert metrics.pearson_delta(CONTROL + 2 * SHIFT, real, CONTROL) == pytest.approx(1.0)
    assert metrics.pearson_delta(CONTROL - SHIFT, real, CONTROL) == pytest.approx(-1.0)


def test_pearson_delta_matches_hand_value_and_scipy():
    # shifts a = (1,0,0), b = (1,1,0): centred (2,-1,-1)/3 and (1,1,-2)/3, r = (3/9) / (6/9) = 0.5
    control = np.zeros((2, 3))
    pred, real = control + [1.0, 0.0, 0.0], control + [1.0, 1.0, 0.0]
    assert metrics.pearson_delta(pred, real, control) == pytest.approx(0.5)
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=20), rng.normal(size=20)
    assert metrics.pearson(a, b) == pytest.approx(pearsonr(a, b).statistic, abs=1e-12)


def test_pearson_delta_of_a_zero_shift_is_nan():
    assert math.isnan(metrics.pearson_delta(CONTROL, CONTROL + SHIFT, CONTROL))
    assert math.isnan(metrics.pearson(np.full(4, 1e-3), np.arange(4.0)))


def test_mean_errors_match_hand_values():
    # pred mean (1, 2), real mean (2, 0): gap (-1, 2), MAE 1.5, MSE 2.5
    pred = np.array([[0.0, 2.0], [2.0, 2.0]])
    real = np.array([[2.0, -1.0], [2.0, 1.0]])
    assert metrics.mean_errors(pred, real) == pytest.approx({"mae_mean": 1.5, "mse_mean": 2.5})


@pytest.mark.parametrize("k, expected", [(1, 0.0), (2, 0.5), (3, 2 / 3), (5, 1.0)])
def test_top_k_overlap_matches_hand_count(k, expected):
    # |pred| ranks dims 0 > 1 > 3 > 2 > 4; |real| ranks dims 1 > 2 > 3 > 0 > 4
    shift_pred = [5.0, -4.0, 0.1, 3.0, 0.0]
    shift_real = [0.2, -6.0, 5.0, 1.0, 0.0]
    assert metrics.top_k_overlap(shift_pred, shift_real, k) == pytest.approx(expected)


def test_top_k_overlap_of_a_zero_shift_is_undefined():
    # without the guard, a zero shift's "top dims" would be dims 0..k-1 by tie-breaking
    assert math.isnan(metrics.top_k_overlap([0.0, 0.0, 0.0], [3.0, 2.0, 0.0], k=2))


def test_top_k_ties_go_to_the_lower_dim_and_k_is_capped_at_d():
    assert metrics.top_k_dims([1.0, -1.0, 1.0], 2).tolist() == [0, 1]
    assert metrics.top_k_overlap([1.0, 2.0], [2.0, 1.0], k=10) == 1.0


# --- velocity agreement ------------------------------------------------------------------------------


def test_velocity_agreement_matches_hand_values_and_respects_confidence():
    # cell 1: cos 1, ||dz|| 1, ||v|| 2; cell 2: cos 0, ||dz|| 1, ||v|| 1
    delta_z = np.array([[1.0, 0.0], [0.0, 1.0]])
    v_z = np.array([[2.0, 0.0], [1.0, 0.0]])
    plain = metrics.velocity_agreement(delta_z, v_z)
    assert plain == pytest.approx({"cos_delta_v": 0.5, "magnitude_ratio": 2 / 3, "n_velocity_cells": 2})
    weighted = metrics.velocity_agreement(delta_z, v_z, confidence=[0.9, 0.3])
    # cos (0.9 * 1 + 0.3 * 0) / 1.2 = 0.75; ratio (0.9 + 0.3) / (0.9 * 2 + 0.3 * 1) = 1.2 / 2.1
    assert weighted["cos_delta_v"] == pytest.approx(0.75)
    assert weighted["magnitude_ratio"] == pytest.approx(1.2 / 2.1)
    masked = metrics.velocity_agreement(delta_z, v_z, confidence=[0.9, 0.3], min_confidence=0.5)
    assert masked == pytest.approx({"cos_delta_v": 1.0, "magnitude_ratio": 0.5, "n_velocity_cells": 1})


def test_velocity_agreement_matches_the_training_loss_metrics():
    from core.velocity.loss import VelocityAlignmentLoss

    rng = np.random.default_rng(6)
    delta_z, v_z = rng.normal(size=(40, 5)), rng.normal(size=(40, 5))
    v_z[3] = 0.0  # no direction: out of the cosine, in the magnitudes
    confidence = rng.uniform(size=40)
    _, stats = VelocityAlignmentLoss(min_confidence=0.3)(
        torch.tensor(delta_z), torch.tensor(v_z), torch.tensor(confidence)
    )
    ours = metrics.velocity_agreement(delta_z, v_z, confidence, min_confidence=0.3)
    assert ours["cos_delta_v"] == pytest.approx(stats["cos_similarity"], abs=1e-6)
    assert ours["magnitude_ratio"] == pytest.approx(stats["magnitude_st"] / stats["magnitude_v"], rel=1e-6)
    assert ours["n_velocity_cells"] == stats["n_cells"]


def test_velocity_agreement_of_no_shift_has_no_cosine_and_zero_magnitude():
    out = metrics.velocity_agreement(np.zeros((3, 2)), np.ones((3, 2)))
    assert math.isnan(out["cos_delta_v"]) and out["magnitude_ratio"] == 0.0 and out["n_velocity_cells"] == 3


def test_velocity_agreement_drops_cells_without_velocity():
    delta_z = np.array([[1.0, 0.0], [0.0, 1.0]])
    v_z = np.array([[np.nan, np.nan], [0.0, 3.0]])
    out = metrics.velocity_agreement(delta_z, v_z)
    assert out == pytest.approx({"cos_delta_v": 1.0, "magnitude_ratio": 1 / 3, "n_velocity_cells": 1})
    none = metrics.velocity_agreement(delta_z, np.full((2, 2), np.nan))
    assert none["n_velocity_cells"] == 0 and math.isnan(none["cos_delta_v"])


def test_group_metrics_of_a_perfect_prediction():
    rng = np.random.default_rng(5)
    control = rng.normal(size=(30, 6))
    real = control + np.linspace(-1, 1, 6)
    out = metrics.group_metrics(real, real, control, delta_z=real - control, v_z=real - control, top_k=3)
    assert out["energy_distance"] == pytest.approx(0.0, abs=1e-12)
    assert out["pearson_delta"] == pytest.approx(1.0)
    assert out["mae_mean"] == pytest.approx(0.0, abs=1e-12) and out["top_k_overlap"] == 1.0
    assert out["cos_delta_v"] == pytest.approx(1.0) and out["magnitude_ratio"] == pytest.approx(1.0)
    assert (out["n_pred"], out["n_real"], out["n_control"]) == (30, 30, 30)


# --- stability ---------------------------------------------------------------------------------------


def _train_frame(losses, grad_norms=None):
    rows = {"split": "train", "step": np.arange(len(losses)) * 10, "loss": losses}
    if grad_norms is not None:
        rows["grad_norm"] = grad_norms
    return pd.DataFrame(rows)


def test_spike_counter_finds_hand_marked_spikes_against_the_running_median():
    # median of previous losses is 1 throughout: 3.5 > 3 is a spike, 2.9 is not, 10 is; NaN is skipped
    losses = [1.0] * 12 + [3.5] + [1.0] * 5 + [2.9, math.nan, 10.0]
    summary = stability_summary(_train_frame(losses))
    assert summary["loss_spikes"] == 2
    assert summary["loss_spike_steps"] == [120, 200]
    assert summary["nonfinite_losses"] == 1 and summary["n_steps"] == 21


def test_spike_window_uses_only_recent_steps_and_waits_for_history():
    # window 3: at 3 the median of (1,1,1) is 1 -> spike; at 4 of (1,1,10) is 1 -> spike;
    # at 5 of (1,10,10) is 10 -> none; at 7 of (10,10,10) is 10 and 25 < 30 -> none
    assert loss_spikes([1, 1, 1, 10, 10, 10, 10, 25], window=3, min_history=3).tolist() == [3, 4]
    # the same jump before min_history steps exist is not counted
    assert loss_spikes([1, 100, 1, 1], window=3, min_history=3).tolist() == []


def test_spikes_count_from_the_second_step_and_the_peak_ratio_is_max_over_first():
    # step 1 (position 0) has no history; position 1: 7 > 3 * median(2) = 6 -> spike; position 2: median(2, 7)
    # = 4.5, 13 < 13.5 -> none; position 3: median(2, 7, 13) = 7, 22 > 21 -> spike. Peak 22 / first 2 = 11.
    summary = stability_summary(_train_frame([2.0, 7.0, 13.0, 22.0]))
    assert summary["loss_spike_steps"] == [10, 30] and summary["spike_min_history"] == 1
    assert summary["peak_loss_ratio"] == pytest.approx(11.0)
    # a falling loss peaks at its first step; NaNs before the first finite loss are skipped
    assert stability_summary(_train_frame([math.nan, 4.0, 3.0, 1.0]))["peak_loss_ratio"] == pytest.approx(1.0)
    assert math.isnan(stability_summary(_train_frame([math.nan]))["peak_loss_ratio"])


def test_grad_norm_percentiles_ignore_validation_rows():
    frame = _train_frame([1.0] * 100, grad_norms=np.arange(1.0, 101.0))
    frame = pd.concat([frame, pd.DataFrame({"split": ["val"], "step": [990], "val_loss": [9.0]})])
    summary = stability_summary(frame)
    # numpy's linear interpolation on 1..100: p5 at rank 4.95 -> 5.95, p50 -> 50.5, p95 at 94.05 -> 95.05
    assert summary["grad_norm_p5"] == pytest.approx(5.95)
    assert summary["grad_norm_p50"] == pytest.approx(50.5)
    assert summary["grad_norm_p95"] == pytest.approx(95.05)
    assert summary["grad_norm_max"] == 100.0 and summary["n_steps"] == 100 and summary["loss_spikes"] == 0


def test_stability_summary_of_an_empty_run_and_of_a_real_metrics_file(tmp_path):
    empty = stability_summary(read_metrics(tmp_path))
    assert empty["n_steps"] == 0 and empty["loss_spikes"] == 0 and math.isnan(empty["grad_norm_p50"])
    with RunWriter(tmp_path) as writer:
        for step, (loss, grad) in enumerate(zip([1.0] * 10 + [4.0], range(1, 12))):
            writer.append_metrics({"split": "train", "step": step, "loss": loss, "grad_norm": float(grad)})
    summary = stability_summary(read_metrics(tmp_path))
    assert summary["loss_spike_steps"] == [10] and summary["grad_norm_max"] == 11.0
