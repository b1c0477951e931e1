import numpy as np
import pytest
from scipy.integrate import solve_ivp

from core.data import demo
from core.data.kinetics import spliced_velocity, unspliced_spliced


def test_kinetics_closed_form_matches_numerical_integration():
    alpha, beta, gamma, t_switch = 2.0, 1.2, 0.4, 3.0

    def rhs(t, y):
        a = alpha if t < t_switch else 0.0
        return [a - beta * y[0], beta * y[0] - gamma * y[1]]

    times = np.array([0.5, 2.0, 3.0, 4.5, 7.0])
    numeric = solve_ivp(rhs, (0, 7.0), [0.0, 0.0], t_eval=times, rtol=1e-10, atol=1e-12, max_step=0.01).y.T
    u, s = unspliced_spliced(times[:, None], np.array([alpha]), np.array([beta]), np.array([gamma]),
                             np.array([t_switch]))
    assert np.allclose(np.c_[u[:, 0], s[:, 0]], numeric, atol=1e-6)
    assert spliced_velocity(u, s, beta, gamma)[0, 0] == pytest.approx(beta * u[0, 0] - gamma * s[0, 0])


def test_demo_has_the_documented_layout(demo_adata, atlas_adata):
    a = demo_adata
    assert 10_000 <= a.n_obs <= 20_000 and 1_000 <= a.n_vars <= 2_000
    assert list(a.obs["condition"].cat.categories) == ["sham", "burn"]
    assert 5 <= a.obs["cell_types_simple_short"].nunique() <= 7
    mice = a.obs.groupby("condition", observed=True)["mouse_id"].nunique()
    assert mice["sham"] in (3, 4) and mice["burn"] in (3, 4)
    for key in ("X_pca", "X_umap", "true_velocity_pca"):
        assert key in a.obsm
    assert a.obsm["X_pca"].shape[1] == 50
    assert set(a.uns["true_burn_effect"]) == set(a.obs["cell_types_simple_short"].cat.categories)
    counts = a.layers["spliced"].data
    assert np.all(counts == np.round(counts)) and a.layers["unspliced"].sum() > 0
    # the atlas: same cell types, 10-20 perturbations, same latent space (same genes, same PCA)
    assert set(atlas_adata.obs["cell_types_simple_short"].cat.categories) == set(CELL_TYPES := demo.CELL_TYPES)
    assert 11 <= atlas_adata.obs["perturbation"].nunique() <= 21 and "control" in set(atlas_adata.obs["perturbation"])
    ctrl = atlas_adata.obs["perturbation"] == "control"
    for ct in CELL_TYPES:
        sham_mean = a.obsm["X_pca"][((a.obs["condition"] == "sham") & (a.obs["cell_types_simple_short"] == ct)).values]
        atlas_mean = atlas_adata.obsm["X_pca"][(ctrl & (atlas_adata.obs["cell_types_simple_short"] == ct)).values]
        # controls of the same cell type sit in the same place of the shared latent space
        assert np.linalg.norm(sham_mean.mean(0) - atlas_mean.mean(0)) < 0.5 * np.linalg.norm(sham_mean.mean(0))


def test_generator_is_reproducible_for_a_seed(demo_adata):
    again, _ = demo.generate(umap=False)
    assert np.array_equal(again.layers["spliced"].toarray(), demo_adata.layers["spliced"].toarray())
    assert np.allclose(again.obsm["X_pca"], demo_adata.obsm["X_pca"], atol=1e-5)


def test_stored_burn_effect_is_what_the_data_shows(demo_adata):
    a = demo_adata
    z, obs = a.obsm["X_pca"], a.obs
    for ct, truth in a.uns["true_burn_effect"].items():
        in_ct = (obs["cell_types_simple_short"] == ct).values
        burn, sham = in_ct & (obs["condition"] == "burn").values, in_ct & (obs["condition"] == "sham").values
        observed = z[burn].mean(0) - z[sham].mean(0)
        cos = observed @ truth / (np.linalg.norm(observed) * np.linalg.norm(truth))
        assert cos > 0.9, (ct, cos)
        assert np.linalg.norm(observed) == pytest.approx(np.linalg.norm(truth), rel=0.25)
    # burn is partly aligned with velocity, by design (stated in data/README.md)
    alignment = np.array(list(a.uns["demo"]["burn_alignment"].values()))
    assert np.all((alignment > 0.1) & (alignment < 0.6))
