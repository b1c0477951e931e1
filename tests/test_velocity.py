import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from core.data.io import read_h5ad
from core.errors import DataError
from core.velocity import centred_projection, check_layers, compute_velocity, use_precomputed

PANCREAS = Path(__file__).resolve().parents[2] / "shared" / "data" / "pancreas_100obs.h5ad"
REPO = Path(__file__).resolve().parents[1]


def cosines(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def test_latent_velocity_recovers_the_true_velocity_on_the_demo(demo_with_velocity):
    a = demo_with_velocity
    cos = cosines(a.obsm["velocity_pca"], a.obsm["true_velocity_pca"])
    confident = a.obs["velocity_confidence"].to_numpy() >= 0.5
    # measured on the demo (seed 20261124): mean 0.63 over all cells; random directions in 50-d give ~0 +- 0.14
    assert confident.mean() > 0.8
    assert cos[confident].mean() > 0.5
    assert np.median(cos) > 0.5
    scvelo_cos = cosines(a.obsm["velocity_pca_scvelo"], a.obsm["true_velocity_pca"])
    assert scvelo_cos.mean() > 0.5
    assert a.layers["velocity"].shape == a.shape
    assert a.uns["velocity_params"]["latent_key"] == "velocity_pca"


def test_centred_projection_is_zero_for_an_undirected_walk_and_follows_a_directed_one():
    z = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]], dtype=np.float32)
    neighbours = sp.csr_matrix(np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]], dtype=np.float32))
    uniform = neighbours.multiply(0.5).tocsr()
    assert np.allclose(centred_projection(uniform, neighbours, z), 0, atol=1e-6)
    # cell 0 moves only to cell 2: T z - A z = (2, 0) - (1.5, 0)
    directed = sp.csr_matrix(np.array([[0, 0, 1.0], [0.5, 0, 0.5], [0.5, 0.5, 0]], dtype=np.float32))
    assert np.allclose(centred_projection(directed, neighbours, z)[0], [0.5, 0.0], atol=1e-6)


def test_pipeline_runs_on_real_pancreas_counts(tmp_path, monkeypatch):
    import scanpy as sc

    monkeypatch.setenv("ST_DATA_CACHE", str(tmp_path))
    a = read_h5ad(PANCREAS)
    norm = a.copy()
    sc.pp.normalize_total(norm)
    sc.pp.log1p(norm)
    sc.pp.pca(norm, n_comps=20)
    a.obsm["X_pca"] = norm.obsm["X_pca"]
    summary = compute_velocity(a, basis="pca", n_neighbors=15)
    v = a.obsm["velocity_pca"]
    assert v.shape == (100, 20) and np.isfinite(v).all() and np.abs(v).sum() > 0
    assert summary["n_velocity_genes"] > 10 and not summary["cached"]
    assert ((a.obs["velocity_confidence"] >= 0) & (a.obs["velocity_confidence"] <= 1.0001)).all()
    again = read_h5ad(PANCREAS)
    again.obsm["X_pca"] = norm.obsm["X_pca"]
    assert compute_velocity(again, basis="pca", n_neighbors=15)["cached"]
    assert np.array_equal(again.obsm["velocity_pca"], v)


def test_missing_empty_or_mismatched_layers_get_clear_errors(small_demo):
    a = small_demo.copy()
    del a.layers["unspliced"]
    with pytest.raises(DataError, match="missing \\['unspliced'\\]"):
        check_layers(a)
    a = small_demo.copy()
    a.layers["spliced"] = sp.csr_matrix(a.shape, dtype=np.float32)
    with pytest.raises(DataError, match="all zero"):
        check_layers(a)


def test_precomputed_velocity_is_checked(small_demo):
    a = small_demo.copy()
    use_precomputed(a, "velocity_pca", "X_pca", "velocity_confidence")
    a.obsm["short"] = a.obsm["X_pca"][:, :10]
    with pytest.raises(DataError, match="same latent space"):
        use_precomputed(a, "short", "X_pca")
    a.obs["bad_conf"] = -1.0
    with pytest.raises(DataError, match=">= 0"):
        use_precomputed(a, "velocity_pca", "X_pca", "bad_conf")


def test_velocity_cli_writes_a_copy_and_refuses_to_overwrite(tmp_path, small_demo):
    src = tmp_path / "in.h5ad"
    small_demo.write_h5ad(src)
    before = src.read_bytes()
    cmd = [sys.executable, "-m", "core", "velocity", "--adata", str(src), "--output", str(src)]
    same = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert same.returncode == 2 and "never overwritten" in same.stderr and "Traceback" not in same.stderr
    out = tmp_path / "out.h5ad"
    ok = subprocess.run(cmd[:-1] + [str(out)], cwd=REPO, capture_output=True, text=True,
                        env={**__import__("os").environ, "ST_DATA_CACHE": str(tmp_path / "cache")})
    assert ok.returncode == 0, ok.stderr
    assert src.read_bytes() == before
    assert read_h5ad(out).obsm["velocity_pca"].shape == small_demo.obsm["X_pca"].shape
