"""The baselines beside every model number: the Gaussian OT map against scipy's matrix square root, the
shrinkage against scikit-learn, and each baseline's numbers on a data set where they are known by hand."""

import math

import numpy as np
import pytest
import scipy.linalg
from sklearn.covariance import ledoit_wolf as sklearn_ledoit_wolf

from core.evaluation import metrics
from core.evaluation.baselines import Baselines, GaussianOTMap, gaussian_ot_matrix, ledoit_wolf, split_half
from core.evaluation.heldout import evaluate_predictions
from tests.unit.test_evaluation_heldout import KEYS, SHIFTS, build_dataset, perfect_predictions


def random_spd(rng, dim):
    root = rng.normal(size=(dim, dim))
    return root @ root.T + 0.5 * np.eye(dim)


@pytest.mark.parametrize("n_cells", [8, 40, 400])  # fewer cells than dims, about as many, many more
def test_ledoit_wolf_matches_scikit_learn(n_cells):
    rng = np.random.default_rng(n_cells)
    cells = rng.normal(size=(n_cells, 12)) @ rng.normal(size=(12, 12)) + 3.0
    covariance, shrinkage = ledoit_wolf(cells)
    expected_cov, expected_shrinkage = sklearn_ledoit_wolf(cells)
    np.testing.assert_allclose(covariance, expected_cov, rtol=1e-10, atol=1e-12)
    assert shrinkage == pytest.approx(expected_shrinkage, rel=1e-10)


def test_gaussian_ot_matrix_matches_the_scipy_closed_form_and_pushes_cov_control_to_cov_burn():
    rng = np.random.default_rng(0)
    cov_c, cov_b = random_spd(rng, 6), random_spd(rng, 6)
    root_c = scipy.linalg.sqrtm(cov_c).real
    inv_root_c = np.linalg.inv(root_c)
    expected = inv_root_c @ scipy.linalg.sqrtm(root_c @ cov_b @ root_c).real @ inv_root_c
    a = gaussian_ot_matrix(cov_c, cov_b)
    np.testing.assert_allclose(a, expected, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(a, a.T, atol=1e-12)
    np.testing.assert_allclose(a @ cov_c @ a, cov_b, rtol=1e-8, atol=1e-10)  # T# N(m_c, S_c) = N(m_b, S_b)
    assert np.linalg.eigvalsh(a).min() > 0  # the gradient of a convex potential: Brenier's map


def test_gaussian_ot_map_is_t_of_x_equals_m_b_plus_a_times_x_minus_m_c():
    rng = np.random.default_rng(1)
    control = rng.normal(size=(300, 4)) @ np.diag([1.0, 2.0, 0.5, 1.0]) + 1.0
    burn = rng.normal(size=(300, 4)) @ np.diag([2.0, 1.0, 1.0, 0.3]) - 2.0
    fitted = GaussianOTMap.fit(control, burn)
    cov_c, _ = sklearn_ledoit_wolf(control)
    cov_b, _ = sklearn_ledoit_wolf(burn)
    x = rng.normal(size=(5, 4))
    expected = burn.mean(0) + (x - control.mean(0)) @ gaussian_ot_matrix(cov_c, cov_b)
    np.testing.assert_allclose(fitted(x), expected, rtol=1e-10)
    # the mapped training controls have the burn cells' mean; the map sends the shrunk control covariance
    # to the shrunk burn covariance exactly
    np.testing.assert_allclose(fitted(control).mean(0), burn.mean(0), atol=1e-10)
    np.testing.assert_allclose(fitted.a @ cov_c @ fitted.a, cov_b, rtol=1e-8, atol=1e-10)


def test_split_half_halves_are_disjoint_and_cover_the_cells():
    cells = np.arange(22, dtype=float).reshape(11, 2)
    a, b = split_half(cells, seed=3)
    assert (len(a), len(b)) == (5, 6)
    assert sorted(np.concatenate([a, b])[:, 0].tolist()) == cells[:, 0].tolist()
    assert split_half(cells[:3]) is None


@pytest.fixture(scope="module")
def scored():
    adata, split = build_dataset()
    return adata, split, evaluate_predictions(perfect_predictions(adata, split), adata, split, KEYS, top_k=2)


def test_global_mean_shift_is_the_average_of_the_cell_types_training_shifts(scored):
    _, _, result = scored
    # training burn = training sham + shift / 2, so the global shift is the mean of the halves
    global_shift = np.mean([s / 2 for s in SHIFTS.values()], axis=0)
    for kind, shift in SHIFTS.items():
        row = result.summary["per_cell_type"][kind]["global_mean_shift"]
        assert row["mae_mean"] == pytest.approx(np.abs(shift - global_shift).mean())
        assert row["mse_mean"] == pytest.approx(((shift - global_shift) ** 2).mean())


def test_gaussian_ot_of_a_pure_translation_is_that_translation(scored):
    # training burn cells are the training sham cells moved by shift / 2: same covariance, so A = I
    _, _, result = scored
    for kind, shift in SHIFTS.items():
        ot = result.summary["per_cell_type"][kind]["gaussian_ot"]
        mean_shift = result.summary["per_cell_type"][kind]["train_mean_shift"]
        assert ot["mae_mean"] == pytest.approx(np.abs(shift / 2).mean())
        assert ot["energy_distance"] == pytest.approx(mean_shift["energy_distance"], rel=1e-9)


def test_resampled_training_burn_cells_are_training_burn_cells_of_the_same_type():
    adata, split = build_dataset()
    z = adata.obsm["X_latent"]
    pert, kind = adata.obs["condition"].to_numpy(), adata.obs["cell_type"].to_numpy()
    baselines = Baselines(z, pert, kind, (split == "train").to_numpy(), "sham", seed=0)
    predicted = baselines.predict("burn", "A", np.zeros((7, 4)))["train_burn_resample"].z_pred
    pool = z[(pert == "burn") & (kind == "A") & (split == "train").to_numpy()]
    assert predicted.shape == (7, 4)
    assert all(np.any(np.all(pool == row, axis=1)) for row in predicted)
    again = Baselines(z, pert, kind, (split == "train").to_numpy(), "sham", seed=0)
    np.testing.assert_array_equal(again.predict("burn", "A", np.zeros((7, 4)))["train_burn_resample"].z_pred,
                                  predicted)


def test_split_half_floor_is_the_halves_distance_moved_to_the_scored_set_sizes(scored):
    adata, split, result = scored
    for kind in SHIFTS:
        real = ((adata.obs["condition"] == "burn") & (adata.obs["cell_type"] == kind)).to_numpy()
        cells = adata.obsm["X_latent"][real & (split == "test").to_numpy()]
        a, b = split_half(cells, seed=0)
        # dbar by hand: the mean distance over distinct pairs
        distances = np.linalg.norm(cells[:, None] - cells[None], axis=-1)
        dbar = distances[~np.eye(len(cells), dtype=bool)].mean()
        n_pred = n_real = len(cells)  # 10 predictions, 10 real cells
        expected = (metrics.energy_distance(a, b) - 0.5 * dbar * (1 / len(a) + 1 / len(b))
                    + 0.5 * dbar * (1 / n_pred + 1 / n_real))
        floor = result.summary["per_cell_type"][kind]["real_split_half"]
        assert floor["energy_distance"] == pytest.approx(expected, rel=1e-10)
        assert floor["mae_mean"] == pytest.approx(np.abs(a.mean(0) - b.mean(0)).mean())  # half against half
        assert "cos_delta_v" not in floor  # a real cell has no delta_z of its own


def test_v_statistic_bias_of_the_energy_distance_is_half_dbar_times_inverse_sizes():
    """The correction the floor relies on, checked by simulation: two independent samples of one
    distribution, of sizes n and m, have mean energy distance 1/2 dbar (1/n + 1/m)."""
    from core.evaluation.baselines import mean_pairwise_distance

    rng = np.random.default_rng(0)
    n, m, dims = 12, 30, 3
    values = [metrics.energy_distance(rng.normal(size=(n, dims)), rng.normal(size=(m, dims))) for _ in range(400)]
    dbar = mean_pairwise_distance(rng.normal(size=(4000, dims)), max_cells=None)
    assert np.mean(values) == pytest.approx(0.5 * dbar * (1 / n + 1 / m), rel=0.05)


def test_best_entry_is_the_lowest_distance_and_never_the_floor(scored):
    _, _, result = scored
    best = result.summary["best"]
    assert best["energy_distance"] == "model"  # the perfect prediction
    assert best["mae_mean"] == "model"
    overall = result.summary["overall"]
    assert overall["real_split_half"]["energy_distance"] > 0
    assert "real_split_half" not in best.values()


def test_held_out_cell_type_has_no_per_cell_type_baselines_and_says_why():
    adata, split = build_dataset()
    split = split.copy()
    split[(adata.obs["cell_type"] == "B").to_numpy()] = "test"  # cell type B: never seen in training
    predictions = perfect_predictions(adata, split)
    result = evaluate_predictions(predictions, adata, split, KEYS, top_k=2)
    per_type = result.summary["per_cell_type"]["B"]
    for method in ("train_mean_shift", "gaussian_ot", "train_burn_resample"):
        assert math.isnan(per_type[method]["energy_distance"])
        assert "cell type 'B'" in result.summary["unavailable"][method]["B"]
        assert math.isnan(result.summary["overall"][method]["energy_distance"])
    # the global shift comes from cell type A alone (its training shift is SHIFTS["A"] / 2)
    in_b = (adata.obs["cell_type"] == "B").to_numpy()
    burn = (adata.obs["condition"] == "burn").to_numpy()
    z = adata.obsm["X_latent"]
    real_shift = z[in_b & burn].mean(0) - z[in_b & ~burn].mean(0)
    global_row = per_type["global_mean_shift"]
    assert global_row["mae_mean"] == pytest.approx(np.abs(real_shift - SHIFTS["A"] / 2).mean())
    assert any("no gaussian_ot baseline" in note for note in result.notes)


def test_model_only_scoring_skips_the_baselines():
    adata, split = build_dataset()
    result = evaluate_predictions(perfect_predictions(adata, split), adata, split, KEYS, with_baselines=False)
    assert set(result.per_group["method"]) == {"model"}
    assert result.summary["best"]["energy_distance"] == "model"
