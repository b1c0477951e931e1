"""Exact neighbours without all pairs (core/velocity/neighbours.py) against scikit-learn's brute force."""

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from core.velocity.neighbours import exact_knn, knn_graph


def _brute(x, k):
    return NearestNeighbors(n_neighbors=k, algorithm="brute").fit(x).kneighbors()


def _trajectories(n, dim=30, seed=0):
    """Cells on a few noisy curves with a spread of scales per axis, like PCA scores of a lineage atlas."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 1, n)
    branch = rng.integers(0, 5, n)
    centres = rng.normal(0, 8, (5, dim))
    directions = rng.normal(0, 4, (5, dim))
    scale = np.linspace(3, 0.3, dim)
    return (centres[branch] + t[:, None] * directions[branch] + rng.normal(0, 1, (n, dim)) * scale).astype(np.float32)


@pytest.mark.parametrize("n,k", [(3000, 29), (1000, 5), (40, 39)])
def test_same_neighbours_and_distances_as_brute_force(n, k):
    x = _trajectories(n)
    dist, idx, order = exact_knn(x, k)
    assert np.array_equal(np.sort(order), np.arange(n))
    ref_dist, ref_idx = _brute(x, k)
    assert idx.shape == (n, k) and dist.dtype == np.float32
    assert np.array_equal(idx, ref_idx)
    assert np.allclose(dist, ref_dist, rtol=1e-5, atol=1e-5)
    assert (np.diff(dist, axis=1) >= 0).all()


def test_duplicated_cells_are_neighbours_of_each_other_but_never_of_themselves():
    x = _trajectories(500)
    x = np.concatenate([x, x[:50]])  # 50 exact duplicates
    dist, idx, _ = exact_knn(x, 10)
    ref_dist, _ = _brute(x, 10)
    assert not (idx == np.arange(len(x))[:, None]).any()
    # a duplicated cell's nearest neighbour is its twin, at distance 0
    assert (idx[:50, 0] == np.arange(500, 550)).all() and (idx[500:, 0] == np.arange(50)).all()
    assert np.allclose(dist[:, 0][:50], 0) and np.allclose(dist, ref_dist, atol=1e-5)


def test_uniform_noise_with_no_structure_is_still_exact():
    x = np.random.default_rng(3).uniform(size=(2000, 12)).astype(np.float32)
    _, idx, _ = exact_knn(x, 15)
    assert np.array_equal(idx, _brute(x, 15)[1])


def test_knn_graph_is_scanpys_support():
    x = _trajectories(800)
    distances, connectivities, knn, _ = knn_graph(x, 16)
    _, ref_idx = _brute(x, 15)
    assert np.array_equal(knn, ref_idx)
    assert (distances.getnnz(1) == 15).all()
    adj = np.zeros((800, 800), bool)
    adj[np.repeat(np.arange(800), 15), ref_idx.ravel()] = True
    assert np.array_equal(connectivities.toarray() > 0, adj | adj.T)


def test_k_must_leave_room():
    with pytest.raises(ValueError, match="between 1 and 9"):
        exact_knn(np.zeros((10, 3), np.float32), 10)
