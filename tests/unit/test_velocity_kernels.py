"""The velocity pipeline's faster kernels give numpy's and scipy's own results bit for bit (bench/README.md,
target 3): each is checked against the expression it replaced."""

import numpy as np
import pytest
import scipy.sparse as sp

from core.velocity import fast, preprocess
from core.velocity.columns import columns, gene_rows
from core.velocity.pipeline import _finite


@pytest.fixture
def cells_by_genes():
    # more cells than one tile (128) and not a multiple of it
    return np.random.default_rng(0).standard_normal((1000, 37)).astype(np.float32)


def test_gene_rows_are_numpys_transposed_column_copy(cells_by_genes):
    for genes in (np.arange(37), np.array([36, 0, 5, 5, 12]), np.array([], dtype=np.int64)):
        expected = np.ascontiguousarray(cells_by_genes[:, genes].T, dtype=np.float32)
        got = gene_rows(cells_by_genes, genes)
        assert got.flags.c_contiguous and got.shape == expected.shape and np.array_equal(got, expected)
    wide = cells_by_genes.astype(np.float64)  # another dtype takes numpy's path, same result
    assert np.array_equal(gene_rows(wide, np.array([3, 1])), np.ascontiguousarray(wide[:, [3, 1]].T, np.float32))


def test_columns_are_numpys_selection_values_and_layout(cells_by_genes):
    keep = np.zeros(37, dtype=bool)
    keep[[0, 4, 9, 36]] = True
    for genes in (keep, np.flatnonzero(keep)):
        expected, got = cells_by_genes[:, genes], columns(cells_by_genes, genes)
        assert np.array_equal(got, expected)
        assert got.flags.f_contiguous == expected.flags.f_contiguous and got.strides == expected.strides
    fortran = np.asfortranarray(cells_by_genes)
    assert np.array_equal(columns(fortran, keep), fortran[:, keep])


def test_dense_blocks_of_rows_are_scipys_toarray():
    m = sp.random(500, 60, density=0.3, random_state=1, dtype=np.float32, format="csr")
    for start, stop in ((0, 500), (0, 7), (123, 400), (450, 900)):
        assert np.array_equal(preprocess._dense_block(m, start, stop), m[start:stop].toarray())
    # duplicates are added, as toarray adds them
    dup = sp.csr_matrix((np.array([1.5, 2.25, 4.0], np.float32), np.array([2, 2, 0]), np.array([0, 2, 3])),
                        shape=(2, 3))
    assert np.array_equal(preprocess._dense_block(dup, 0, 2), dup.toarray())
    wide = m.astype(np.float64)  # another dtype is scipy's own toarray, in that dtype
    got = preprocess._dense_block(wide, 100, 130)
    assert got.dtype == np.float64 and np.array_equal(got, wide[100:130].toarray())


def test_log1p_in_blocks_is_numpys():
    values = np.random.default_rng(2).gamma(0.5, 30, size=(1 << 22) + 12345).astype(np.float32)  # 2 blocks
    got = preprocess._log1p(values)
    assert got is not values and np.array_equal(got, np.log1p(values))


def test_shared_counts_sum_both_layers_where_both_are_positive():
    # cell 0: gene 0 in both (3 + 1), gene 1 spliced only; cell 1: gene 1 in both (2 + 5), gene 2 unspliced only
    s = sp.csr_matrix(np.array([[3, 4, 0], [0, 2, 0], [1, 0, 0]], dtype=np.float32))
    u = sp.csr_matrix(np.array([[1, 0, 0], [0, 5, 6], [0, 0, 0]], dtype=np.float32))
    assert preprocess._shared_counts(s, u).tolist() == [4.0, 7.0, 0.0]
    s = sp.random(3000, 40, density=0.4, random_state=4, format="csr", dtype=np.float32)
    u = sp.random(3000, 40, density=0.4, random_state=5, format="csr", dtype=np.float32)
    s.data, u.data = np.ceil(s.data * 9), np.ceil(u.data * 9)
    both = (s.toarray() > 0) & (u.toarray() > 0)
    expected = np.where(both, s.toarray() + u.toarray(), 0).sum(0, dtype=np.float64)
    assert np.array_equal(preprocess._shared_counts(s, u), expected)


def _scipy_two_hop(knn):
    n, k = knn.shape
    adj = sp.csr_matrix((np.ones(n * k, dtype=np.float32), knn.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n))
    one_hop = adj + sp.identity(n, dtype=np.float32, format="csr")
    support = one_hop + adj @ one_hop
    support.data[:] = 1
    support.sort_indices()
    return support


@pytest.mark.parametrize("n,k", [(2, 1), (40, 3), (1500, 12)])
def test_two_hop_support_is_scipys_sum_and_product(n, k):
    rng = np.random.default_rng(n)
    knn = np.sort([rng.choice(np.delete(np.arange(n), i), k, replace=False) for i in range(n)], axis=1)
    got, expected = fast._two_hop_support(knn), _scipy_two_hop(knn)
    assert got.has_sorted_indices and got.dtype == expected.dtype and got.indices.dtype == expected.indices.dtype
    assert np.array_equal(got.indptr, expected.indptr) and np.array_equal(got.indices, expected.indices)
    assert np.array_equal(got.data, expected.data)


def test_velocity_in_row_blocks_is_the_whole_array_expression(monkeypatch):
    monkeypatch.setattr(fast, "_CELL_BLOCK", 7)  # several blocks, an uneven last one
    rng = np.random.default_rng(6)
    Ms, Mu = rng.random((100, 9), dtype=np.float32), rng.random((100, 9), dtype=np.float32)
    gamma = rng.random(9) * 3
    assert np.array_equal(fast._velocity(Mu, Ms, gamma), Mu - gamma.astype(np.float32) * Ms)


def test_finite_leaves_finite_arrays_alone_and_cleans_the_rest():
    a = np.array([1.0, -2.0], dtype=np.float32)
    assert _finite(a) is a
    b = np.array([np.nan, np.inf, -np.inf, 3.0], dtype=np.float32)
    assert np.array_equal(_finite(b.copy()), np.nan_to_num(b))


def test_float32_copies_in_blocks_are_astypes():
    for values in (np.random.default_rng(7).random((1 << 22) + 5), np.arange(1000, dtype=np.int64)):
        got = preprocess._float32_values(values)
        assert got.dtype == np.float32 and np.array_equal(got, values.astype(np.float32))


def test_scores_of_sparse_rows_are_scipys_float32_product():
    x = sp.random(800, 50, density=0.4, random_state=8, dtype=np.float32, format="csr")
    x.data = np.log1p(x.data * 1e3).astype(np.float32)
    mean, axes = preprocess.principal_axes(x, 6)
    expected = (np.asarray(x @ axes.astype(np.float32), dtype=np.float64) - mean @ axes).astype(np.float32)
    assert np.array_equal(preprocess.principal_components(x, 6), expected)
