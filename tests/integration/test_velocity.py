import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from support import PANCREAS, pancreas_with_pca

from core.data.io import read_h5ad
from core.errors import DataError
from core.velocity.fast import transition_projection
from core.velocity.pipeline import check_layers, compute_velocity, save_with_velocity, use_precomputed

REPO = Path(__file__).resolve().parents[2]
# real mouse pancreas counts (100 cells, scvelo's test data, BSD-3), in ../shared beside the checkout


def cosines(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def test_latent_velocity_recovers_the_true_velocity_on_the_demo(demo_with_velocity):
    a = demo_with_velocity
    truth = a.obsm["true_velocity_pca"]
    cos = cosines(a.obsm["velocity_pca"], truth)
    confident = a.obs["velocity_confidence"].to_numpy() >= 0.5
    # measured on the demo v4 (seed 20261124, 12,000 cells, fast engine = scvelo): every cell has confidence
    # >= 0.5 (1st percentile 0.79); mean cosine 0.67, median 0.69, every cell type 0.59-0.72 (Diff_KC lowest;
    # v3, where every burn cell moved alike: 0.71, 0.74, 0.67-0.73). Random directions in 50-d give 0 +- 0.14.
    assert confident.mean() > 0.95
    assert cos[confident].mean() > 0.63 and np.median(cos) > 0.65
    for ct in a.obs["cell_types_simple_short"].cat.categories:
        assert cos[(a.obs["cell_types_simple_short"] == ct).to_numpy()].mean() > 0.55, ct
    # scvelo's own unit-length projection points the same way (mean cosine 0.68 to the truth) ...
    assert cosines(a.obsm["velocity_pca_scvelo"], truth).mean() > 0.63
    # ... while the latent one keeps units: its length follows the true speed (measured correlation 0.89)
    speed = np.corrcoef(np.linalg.norm(a.obsm["velocity_pca"], axis=1), np.linalg.norm(truth, axis=1))[0, 1]
    assert speed > 0.75
    assert a.layers["velocity"].shape == a.shape and a.var["velocity_genes"].sum() > 500
    assert a.uns["velocity_params"]["latent_key"] == "velocity_pca"


def test_transition_projection_matches_hand_computed_values():
    z = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    # cell 0 moves to cell 1 with p = 0.5 and to cells 2, 3 with 0.25 each: p_bar = 1/3
    T = sp.csr_matrix(np.array([[0.0, 0.5, 0.25, 0.25], [1.0, 0, 0, 0], [1.0, 0, 0, 0], [1.0, 0, 0, 0]]))
    unit, latent = transition_projection(T, z)
    w = np.array([0.5, 0.25, 0.25]) - 1 / 3
    assert np.allclose(latent[0], w[0] * np.array([3.0, 0]) + w[1] * np.array([0, 1.0]) + w[2] * np.array([0, -1.0]))
    assert np.allclose(unit[0], [w[0], 0.0])  # unit displacements (1, 0), (0, 1), (0, -1)
    # one neighbour only: p - p_bar = 0, nothing to project (scvelo gives 0 too)
    assert np.allclose(latent[1:], 0) and np.allclose(unit[1:], 0)
    # a velocity-blind (uniform) walk projects to zero whatever the geometry
    uniform = sp.csr_matrix(np.full((4, 4), 1 / 3) - np.eye(4) / 3)
    assert np.allclose(transition_projection(uniform, z)[1], 0, atol=1e-7)


def test_pipeline_runs_on_real_pancreas_counts(tmp_path, monkeypatch):
    monkeypatch.setenv("ST_DATA_CACHE", str(tmp_path))
    a = pancreas_with_pca(20)
    steps = []
    summary = compute_velocity(a, basis="pca", n_neighbors=15, progress=lambda name, f: steps.append((name, f)))
    assert [name for name, _ in steps] == ["normalise", "neighbours", "moments", "velocity", "velocity graph",
                                           "projection", "confidence"]
    assert [f for _, f in steps] == sorted(f for _, f in steps) and steps[-1][1] == 1.0
    v = a.obsm["velocity_pca"]
    assert v.shape == (100, 20) and np.isfinite(v).all() and (np.linalg.norm(v, axis=1) > 0).mean() > 0.9
    assert summary["n_velocity_genes"] > 10 and not summary["cached"]
    assert ((a.obs["velocity_confidence"] >= 0) & (a.obs["velocity_confidence"] <= 1)).all()
    # the same data and parameters come from the cache, identical
    again = read_h5ad(PANCREAS)
    again.obsm["X_pca"] = a.obsm["X_pca"]
    assert compute_velocity(again, basis="pca", n_neighbors=15)["cached"]
    assert np.array_equal(again.obsm["velocity_pca"], v)
    # on real counts too, the fast engine reproduces scvelo
    ref = read_h5ad(PANCREAS)
    ref.obsm["X_pca"] = a.obsm["X_pca"]
    compute_velocity(ref, basis="pca", n_neighbors=15, engine="scvelo", use_cache=False)
    assert np.quantile(cosines(ref.obsm["velocity_pca"], v), 0.01) > 0.99


def test_missing_empty_or_mismatched_layers_get_clear_errors(small_demo):
    a = small_demo[:300].copy()
    check_layers(a)
    del a.layers["unspliced"]
    with pytest.raises(DataError, match=r"missing \['unspliced'\]"):
        check_layers(a)
    with pytest.raises(DataError, match="missing"):
        compute_velocity(a)
    a = small_demo[:300].copy()
    a.layers["spliced"] = sp.csr_matrix(a.shape, dtype=np.float32)
    with pytest.raises(DataError, match="all zero"):
        check_layers(a)
    a = small_demo[:300].copy()
    a.layers["unspliced"] = a.layers["unspliced"] * -1
    with pytest.raises(DataError, match="negative"):
        check_layers(a)
    # layers from another gene order: same shapes, but the genes no longer follow X
    a = small_demo[:300].copy()
    order = np.random.default_rng(0).permutation(a.n_vars)
    a.layers["spliced"], a.layers["unspliced"] = a.layers["spliced"][:, order], a.layers["unspliced"][:, order]
    with pytest.raises(DataError, match="do not match X") as err:
        check_layers(a)
    assert "\n" not in str(err.value)


def test_bad_parameters_and_embeddings_are_refused(small_demo):
    a = small_demo[:200].copy()
    with pytest.raises(DataError, match="no embedding obsm\\['X_state'\\]"):
        compute_velocity(a, embed_key="X_state")
    with pytest.raises(DataError, match="mode"):
        compute_velocity(a, mode="steady")
    with pytest.raises(DataError, match="engine"):
        compute_velocity(a, engine="gpu")
    a.obsm["X_pca"][0, 0] = np.nan
    with pytest.raises(DataError, match="finite"):
        compute_velocity(a)


def test_precomputed_velocity_is_checked(small_demo):
    a = small_demo[:200].copy()
    use_precomputed(a, "velocity_pca", "X_pca", "velocity_confidence")
    a.obsm["short"] = a.obsm["X_pca"][:, :10]
    with pytest.raises(DataError, match="same latent space"):
        use_precomputed(a, "short", "X_pca")
    with pytest.raises(DataError, match="not found"):
        use_precomputed(a, "velocity_umap", "X_pca")
    a.obs["bad_conf"] = -1.0
    with pytest.raises(DataError, match=">= 0"):
        use_precomputed(a, "velocity_pca", "X_pca", "bad_conf")


def test_saving_never_overwrites_the_input(small_demo, tmp_path):
    src = tmp_path / "in.h5ad"
    small_demo[:100].copy().write_h5ad(src)
    with pytest.raises(DataError, match="never overwritten"):
        save_with_velocity(read_h5ad(src), tmp_path / "." / "in.h5ad", source=src)
    out = save_with_velocity(read_h5ad(src), tmp_path / "sub" / "out.h5ad", source=src)
    assert read_h5ad(out).n_obs == 100 and not list(tmp_path.glob("sub/.*tmp*"))


@pytest.mark.slow
def test_velocity_cli_writes_a_copy_and_refuses_to_overwrite(tmp_path, small_demo):
    src = tmp_path / "in.h5ad"
    small = small_demo[:400].copy()
    for key in ("velocity_pca", "velocity_pca_scvelo"):
        del small.obsm[key]
    del small.layers["velocity"], small.obs["velocity_confidence"]
    small.write_h5ad(src)
    before = src.read_bytes()
    cmd = [sys.executable, "-m", "core", "velocity", "--adata", str(src), "--output", str(src)]
    env = {**os.environ, "ST_DATA_CACHE": str(tmp_path / "cache")}
    same = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    assert same.returncode == 2 and "never overwritten" in same.stderr and "Traceback" not in same.stderr
    out = tmp_path / "out.h5ad"
    ok = subprocess.run(cmd[:-1] + [str(out), "--n-neighbors", "15"], cwd=REPO, capture_output=True, text=True,
                        env=env)
    assert ok.returncode == 0, ok.stderr
    assert "[100%] confidence" in ok.stdout and "wrote" in ok.stdout
    assert src.read_bytes() == before
    written = read_h5ad(out)
    assert written.obsm["velocity_pca"].shape == small.obsm["X_pca"].shape
    assert written.uns["velocity_params"]["n_neighbors"] == 15 and "velocity_confidence" in written.obs
    missing = subprocess.run([sys.executable, "-m", "core", "velocity", "--adata", str(tmp_path / "nope.h5ad"),
                              "--output", str(out)], cwd=REPO, capture_output=True, text=True, env=env)
    assert missing.returncode == 2 and missing.stderr.startswith("error: no file at")
