"""Exact neighbours without all pairs (core/velocity/neighbours.py) against scikit-learn's brute force."""

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from core.velocity.neighbours import _ranking_distances, _smallest, exact_knn, knn_graph


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


@pytest.mark.parametrize("rows,cols,keep", [(40, 3000, 37), (7, 130, 37), (5, 37, 37), (3, 1, 1)])
def test_smallest_is_torch_topk(rows, cols, keep):
    rng = np.random.default_rng(rows)
    values = rng.normal(size=(rows, cols)).astype(np.float32)
    values[:, :5] -= 3  # the first entries nearest, as a cluster's own cells come first
    values[0, cols // 2] = -np.inf
    values[-1, 0] = np.inf
    ref = torch.topk(torch.from_numpy(values), keep, dim=1, largest=False)
    assert np.array_equal(_smallest(values, keep), ref.indices.numpy())


def test_smallest_gives_inf_entries_last_when_a_row_has_too_few_finite_ones():
    # a cluster with just keep candidates: the query's own column (inf) must still be in its row, as topk has it
    values = np.array([[1, np.inf, 2, 0], [np.inf, 3, np.inf, 1]], dtype=np.float32)
    assert _smallest(values, 4).tolist() == [[3, 0, 2, 1], [3, 1, 0, 2]]


def test_smallest_keeps_the_first_of_equal_values():
    values = np.array([[2, 1, 1, 0, 1, 3]], dtype=np.float32)
    assert _smallest(values, 3).tolist() == [[3, 1, 2]]


def test_ranking_distances_order_each_row_as_the_distances_do():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(20, 30)), rng.normal(size=(500, 30))
    exact = ((a[:, None, :] - b[None, :, :]) ** 2).sum(2)
    ranked = _ranking_distances(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    assert np.allclose(ranked + (a * a).sum(1)[:, None], exact, atol=1e-9)
    assert np.array_equal(np.argsort(ranked, 1), np.argsort(exact, 1))
