"""Scoring held-out predictions against real cells and baselines, on a data set built so every number is
known by hand: each test burn cell is a test sham cell moved by the cell type's true shift."""

import json
import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from core.errors import DataError
from core.evaluation.heldout import DataKeys, evaluate_predictions
from core.evaluation.report import write_evaluation

SHIFTS = {"A": np.array([2.0, 0.0, 0.0, -1.0]), "B": np.array([0.0, 1.0, 3.0, 0.0])}
KEYS = DataKeys("X_latent", "condition", "sham", "cell_type", "velocity_latent", "velocity_confidence")


def build_dataset(seed=0, n_train=20, n_test=10):
    """Train burn = train sham + shift / 2; test burn = test sham + shift (same cells, moved)."""
    rng = np.random.default_rng(seed)
    names, rows, obs = [], [], []
    for kind, shift in SHIFTS.items():
        centre = rng.normal(scale=3.0, size=4)
        train_sham = centre + rng.normal(size=(n_train, 4))
        test_sham = centre + rng.normal(size=(n_test, 4))
        blocks = [
            ("train", "sham", train_sham),
            ("train", "burn", train_sham + shift / 2),
            ("test", "sham", test_sham),
            ("test", "burn", test_sham + shift),
        ]
        for split, condition, cells in blocks:
            for i, cell in enumerate(cells):
                names.append(f"{kind}-{split}-{condition}-{i}")
                rows.append(cell)
                obs.append({"condition": condition, "cell_type": kind, "split": split})
    frame = pd.DataFrame(obs, index=names)
    adata = ad.AnnData(X=np.zeros((len(names), 1), dtype=np.float32), obs=frame.drop(columns="split"))
    adata.obsm["X_latent"] = np.asarray(rows)
    # velocity along the true shift for A, against it for B; every cell confident
    sign = {"A": 1.0, "B": -1.0}
    adata.obsm["velocity_latent"] = np.stack([SHIFTS[k] * sign[k] for k in frame["cell_type"]])
    adata.obs["velocity_confidence"] = 1.0
    return adata, frame["split"]


def perfect_predictions(adata, split):
    controls = adata.obs_names[(adata.obs["condition"] == "sham").to_numpy() & (split == "test").to_numpy()]
    z_control = adata[controls].obsm["X_latent"]
    shift = np.stack([SHIFTS[k] for k in adata.obs.loc[controls, "cell_type"]])
    preds = ad.AnnData(
        X=np.zeros((len(controls), 1), dtype=np.float32),
        obs=pd.DataFrame(
            {"matched_control": list(controls), "condition": "burn"}, index=[f"pred-{c}" for c in controls]
        ),
    )
    preds.obsm["X_pred"] = z_control + shift
    preds.obsm["delta_z"] = shift
    return preds


@pytest.fixture(scope="module")
def scored():
    adata, split = build_dataset()
    return evaluate_predictions(perfect_predictions(adata, split), adata, split, KEYS, top_k=2)


def test_perfect_model_scores_zero_distance_and_unit_pearson_per_cell_type(scored):
    for kind in SHIFTS:
        model = scored.summary["per_cell_type"][kind]["model"]
        assert model["energy_distance"] == pytest.approx(0.0, abs=1e-9)
        assert model["pearson_delta"] == pytest.approx(1.0)
        assert model["mae_mean"] == pytest.approx(0.0, abs=1e-12)
        assert model["top_k_overlap"] == 1.0
        assert (model["n_pred"], model["n_real"], model["n_control"]) == (10, 10, 10)


def test_no_change_baseline_errs_by_the_true_shift_and_has_no_direction(scored):
    for kind, shift in SHIFTS.items():
        baseline = scored.summary["per_cell_type"][kind]["no_change"]
        assert baseline["mae_mean"] == pytest.approx(np.abs(shift).mean())
        assert baseline["mse_mean"] == pytest.approx((shift**2).mean())
        assert math.isnan(baseline["pearson_delta"]) and math.isnan(baseline["cos_delta_v"])
        assert math.isnan(baseline["top_k_overlap"]) and baseline["magnitude_ratio"] == 0.0
        assert baseline["energy_distance"] > 0.1


def test_train_mean_shift_baseline_uses_the_training_split_shift(scored):
    # the training shift is half the true one: right direction, half the size
    for kind, shift in SHIFTS.items():
        baseline = scored.summary["per_cell_type"][kind]["train_mean_shift"]
        assert baseline["mae_mean"] == pytest.approx(np.abs(shift / 2).mean())
        assert baseline["pearson_delta"] == pytest.approx(1.0)
        assert baseline["magnitude_ratio"] == pytest.approx(0.5)


def test_velocity_agreement_per_cell_type_and_overall(scored):
    per_type = scored.summary["per_cell_type"]
    assert per_type["A"]["model"]["cos_delta_v"] == pytest.approx(1.0)
    assert per_type["B"]["model"]["cos_delta_v"] == pytest.approx(-1.0)
    assert per_type["A"]["model"]["magnitude_ratio"] == pytest.approx(1.0)
    overall = scored.summary["overall"]["model"]
    assert overall["cos_delta_v"] == pytest.approx(0.0, abs=1e-12)  # mean of +1 and -1
    assert overall["n_pred"] == 20 and overall["n_velocity_cells"] == 20


def test_overall_is_the_mean_over_cell_types_and_the_verdict_follows_it(scored):
    overall = scored.summary["overall"]["no_change"]
    expected = np.mean([np.abs(s).mean() for s in SHIFTS.values()])
    assert overall["mae_mean"] == pytest.approx(expected)
    verdict = scored.summary["model_beats_baseline"]
    assert verdict["energy_distance"]["no_change"] is True and verdict["energy_distance"]["train_mean_shift"] is True
    assert verdict["pearson_delta"]["no_change"] is None
    assert verdict["pearson_delta"]["train_mean_shift"] is False  # 1 is not > 1
    assert scored.summary["all_cells"]["model"]["energy_distance"] == pytest.approx(0.0, abs=1e-9)


def test_per_group_table_has_one_row_per_cell_type_and_method(scored):
    table = scored.per_group
    methods = ("model", "no_change", "global_mean_shift", "train_mean_shift", "gaussian_ot",
               "train_burn_resample", "real_split_half")
    assert len(table) == 2 * len(methods)
    assert set(zip(table["cell_type"], table["method"])) == {(k, m) for k in "AB" for m in methods}
    assert list(table.columns[:3]) == ["perturbation", "cell_type", "method"]


def test_written_evaluation_is_valid_json_with_null_for_undefined_values(scored, tmp_path):
    paths = write_evaluation(tmp_path / "eval", scored.summary, scored.per_group)
    text = paths["metrics"].read_text()
    assert "NaN" not in text
    loaded = json.loads(text)
    assert loaded["per_cell_type"]["A"]["no_change"]["pearson_delta"] is None
    table = pd.read_csv(paths["per_cell_type"])
    row = table[(table.cell_type == "B") & (table.method == "no_change")]
    assert row["mae_mean"].item() == pytest.approx(np.abs(SHIFTS["B"]).mean())


def test_predictions_of_another_data_set_are_refused():
    adata, split = build_dataset()
    preds = perfect_predictions(adata, split)
    wrong = preds.copy()
    wrong.obs["matched_control"] = "not-a-cell"
    with pytest.raises(DataError, match="not in the data set"):
        evaluate_predictions(wrong, adata, split, KEYS)
    moved = preds.copy()
    moved.obsm["delta_z"] = moved.obsm["delta_z"] + 1.0
    with pytest.raises(DataError, match="do not belong"):
        evaluate_predictions(moved, adata, split, KEYS)


def test_cell_types_without_held_out_perturbed_cells_are_skipped_with_a_reason():
    adata, split = build_dataset()
    preds = perfect_predictions(adata, split)
    split = split.copy()
    b_burn = (adata.obs["cell_type"] == "B").to_numpy() & (adata.obs["condition"] == "burn").to_numpy()
    split[b_burn] = "train"
    result = evaluate_predictions(preds, adata, split, KEYS)
    assert set(result.summary["per_cell_type"]) == {"A"}
    assert "no real 'burn' cells" in result.summary["skipped"]["B"]
    split[:] = "train"
    with pytest.raises(DataError, match="no cell type has both"):
        evaluate_predictions(preds, adata, split, KEYS)


def test_without_velocity_keys_there_are_no_velocity_metrics():
    adata, split = build_dataset()
    del adata.obsm["velocity_latent"]
    result = evaluate_predictions(perfect_predictions(adata, split), adata, split, KEYS)
    assert "cos_delta_v" not in result.summary["per_cell_type"]["A"]["model"]
    assert any("no obsm['velocity_latent']" in note for note in result.notes)


def test_cos_with_a_known_true_velocity_is_scored_per_cell_unweighted():
    """The demo knows its true velocity: cos(dz, true v) per predicted cell, by hand. Here the true velocity of
    cell i is e_0 for type A (cos with A's shift (2, 0, 0, -1) is 2 / sqrt(5)) and e_0 + e_2 for B (cos with
    (0, 1, 3, 0) is 3 / sqrt(10) / sqrt(2)); the observed velocity (and its confidences) play no part."""
    adata, split = build_dataset()
    true_v = {"A": np.array([1.0, 0.0, 0.0, 0.0]), "B": np.array([1.0, 0.0, 1.0, 0.0])}
    adata.obsm["true_velocity_latent"] = np.stack([true_v[k] for k in adata.obs["cell_type"]])
    adata.obs["velocity_confidence"] = np.linspace(0.1, 1.0, adata.n_obs)  # would change a weighted mean
    keys = DataKeys(*KEYS.__dict__.values())
    keys.true_velocity_key = "true_velocity_latent"
    summary = evaluate_predictions(perfect_predictions(adata, split), adata, split, keys).summary
    expected = {"A": 2 / math.sqrt(5), "B": 3 / math.sqrt(10) / math.sqrt(2)}
    for kind, value in expected.items():
        assert summary["per_cell_type"][kind]["model"]["cos_delta_true_v"] == pytest.approx(value, abs=1e-12)
    assert summary["overall"]["model"]["cos_delta_true_v"] == pytest.approx(np.mean(list(expected.values())))
    # pooled: 10 test cells of each type, so the plain mean of the two
    assert summary["all_cells"]["model"]["cos_delta_true_v"] == pytest.approx(np.mean(list(expected.values())))
    # the per-cell-type shift baseline moves each cell by the training shift (shift / 2): the same direction
    assert summary["overall"]["train_mean_shift"]["cos_delta_true_v"] == pytest.approx(
        np.mean(list(expected.values())))
    assert math.isnan(summary["overall"]["real_split_half"]["cos_delta_true_v"])  # the floor has no dz
    # without a true velocity in the data set the metric is undefined, not zero, and the table leaves it out
    plain = evaluate_predictions(perfect_predictions(adata, split), adata, split, KEYS).summary
    assert math.isnan(plain["overall"]["model"]["cos_delta_true_v"])
    assert "cos_delta_true_v" not in plain["per_cell_type"]["A"]["model"]
    from core.evaluation.table import metric_rows

    assert "cos_delta_true_v" in [row["metric"] for row in metric_rows(summary)[1]]
    assert "cos_delta_true_v" not in [row["metric"] for row in metric_rows(plain)[1]]
