"""Which mHC mapping moved most since step 0: ranked by max |Δ| as a fraction of each mapping's range (H_res and
H_pre live in [0, 1], H_post = 2 sigmoid in [0, 2]), from snapshots built by hand."""

import numpy as np
import pytest

from core.evaluation.mhc_drift import describe_most_moved, mapping_drift, most_moved

N = 4


def snapshot(step, res_shift=0.0, pre_shift=0.0, post_shift=0.0, layer=1):
    h_res = np.full((2, N, N), 1.0 / N)
    h_res[layer, 0, 0] += res_shift
    h_res[layer, 0, 1] -= res_shift  # rows still sum to 1
    h_pre = np.full((2, N), 0.25)
    h_pre[layer, 2] += pre_shift
    h_post = np.ones((2, N))
    h_post[layer, 3] -= post_shift
    return {"step": step, "layer_indices": np.array([0, 1]), "h_res": h_res, "h_pre": h_pre, "h_post": h_post}


def test_h_post_moving_most_is_named_with_its_layer_and_the_others():
    drift = mapping_drift([snapshot(0), snapshot(10, 0.02, 0.01, 0.1), snapshot(20, 0.05, 0.01, 0.3)])
    moved = most_moved(drift)
    assert moved["mapping"] == "h_post" and moved["layer"] == 1 and moved["step"] == 20
    assert moved["max_abs"] == pytest.approx({"h_res": 0.05, "h_pre": 0.01, "h_post": 0.3})
    assert moved["fraction"]["h_post"] == pytest.approx(0.15)
    assert describe_most_moved(moved) == ("From step 0 to step 20, H_post moved most: max |Δ| 0.3 in layer 1 "
                                          "(15.0% of its range), against H_res 0.05, H_pre 0.01.")
    assert most_moved(drift, at=1)["max_abs"]["h_post"] == pytest.approx(0.1)  # at an earlier snapshot


def test_the_ranking_is_relative_to_each_mappings_range():
    # H_post moved more in absolute terms (0.4 > 0.25) but less of its range (20% < 25%)
    drift = mapping_drift([snapshot(0, layer=0), snapshot(5, res_shift=0.25, post_shift=0.4, layer=0)])
    moved = most_moved(drift)
    assert moved["mapping"] == "h_res" and moved["layer"] == 0
    assert moved["fraction"] == pytest.approx({"h_res": 0.25, "h_pre": 0.0, "h_post": 0.2})


def test_a_run_that_has_not_moved_says_so():
    drift = mapping_drift([snapshot(0), snapshot(8)])
    assert describe_most_moved(most_moved(drift)) == "No mapping has moved from its init (step 0) by step 8."
