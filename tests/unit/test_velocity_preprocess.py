"""The fast engine's preprocessing (core/velocity/preprocess.py) against scvelo's and scanpy's own functions."""

import numpy as np
import pytest
import scipy.sparse as sp
from support import pancreas_with_pca

from core.velocity.preprocess import neighbour_mean, prepare, principal_axes, principal_components


@pytest.fixture(scope="module")
def both():
    """Real pancreas counts through scvelo/scanpy (as the scvelo engine runs them) and through prepare()."""
    import anndata as ad
    import scanpy as sc
    import scvelo as scv

    scv.settings.verbosity = 0
    adata = pancreas_with_pca(10)
    work = ad.AnnData(X=sp.csr_matrix(adata.layers["spliced"], dtype=np.float32))
    work.layers["spliced"] = sp.csr_matrix(adata.layers["spliced"], dtype=np.float32)
    work.layers["unspliced"] = sp.csr_matrix(adata.layers["unspliced"], dtype=np.float32)
    work.var["gene_index"] = np.arange(adata.n_vars)
    scv.pp.filter_and_normalize(work, min_shared_counts=20)
    filtered = work.var["gene_index"].to_numpy()
    sc.pp.log1p(work)
    sc.pp.highly_variable_genes(work, n_top_genes=200, subset=True)
    sc.pp.pca(work, n_comps=30)
    sc.pp.neighbors(work, n_neighbors=12, n_pcs=30, transformer="sklearn")
    scv.pp.moments(work, n_pcs=None, n_neighbors=None)
    ours = prepare(adata.layers["spliced"], adata.layers["unspliced"], raw=True, n_top_genes=200, n_neighbors=12)
    return adata, work, filtered, ours


def test_genes_are_scvelos_shared_count_filter_then_scanpys_highly_variable(both):
    adata, work, filtered, ours = both
    assert 200 == len(ours.gene_index) < len(filtered) < adata.n_vars  # both steps really removed genes
    assert np.array_equal(ours.gene_index, work.var["gene_index"].to_numpy())
    assert ours.highly_variable.all()


def test_normalised_layers_equal_scvelos_exactly(both):
    _, work, _, ours = both
    for name, mine in (("spliced", ours.spliced), ("unspliced", ours.unspliced)):
        assert np.array_equal(mine.toarray(), work.layers[name].toarray()), name


def test_neighbours_and_moments_equal_scvelos(both):
    _, work, _, ours = both
    assert ours.n_pcs == 30 and ours.n_neighbors == 12
    assert np.array_equal(ours.connectivities.toarray() > 0, work.obsp["connectivities"].toarray() > 0)
    # the same kNN graph and the same summation order: Ms and Mu to the last bit
    assert np.array_equal(ours.Ms, work.layers["Ms"]) and np.array_equal(ours.Mu, work.layers["Mu"])


def test_principal_components_span_scanpys_and_keep_its_distances():
    import scanpy as sc

    rng = np.random.default_rng(0)
    x = sp.random(400, 80, density=0.3, random_state=1, dtype=np.float32, format="csr")
    x.data = np.log1p(x.data * 10 * rng.uniform(0.5, 2, x.nnz).astype(np.float32))
    scores = principal_components(x, 10)
    ref = sc.pp.pca(x.toarray(), n_comps=10, svd_solver="full")
    # the same axes up to sign: each score column equals scanpy's or its negative
    for c in range(10):
        assert min(np.abs(scores[:, c] - ref[:, c]).max(), np.abs(scores[:, c] + ref[:, c]).max()) < 1e-3
    dist = np.linalg.norm(scores[:50, None] - scores[None, :50], axis=2)
    ref_dist = np.linalg.norm(ref[:50, None] - ref[None, :50], axis=2)
    assert np.allclose(dist, ref_dist, atol=1e-3)


def test_the_mean_of_sparse_rows_is_scipys_float64_sum_bit_for_bit():
    x = sp.random(3000, 50, density=0.4, random_state=2, dtype=np.float32, format="csr")
    x.data = np.log1p(x.data * 1e3).astype(np.float32)
    mean, _ = principal_axes(x, 5)
    np.testing.assert_array_equal(mean, np.asarray(sp.csr_matrix(x, dtype=np.float64).sum(0)).ravel() / 3000)
    dense_mean, _ = principal_axes(x.toarray(), 5)
    np.testing.assert_allclose(dense_mean, mean, rtol=1e-12)


def test_neighbour_mean_is_scipys_product():
    graph = sp.random(300, 300, density=0.05, random_state=2, dtype=np.float32, format="csr")
    m = sp.random(300, 40, density=0.4, random_state=3, dtype=np.float32, format="csr")
    assert np.array_equal(neighbour_mean(graph, m), (graph @ m).toarray())
    order = np.random.default_rng(4).permutation(300)  # the order rows are summed in changes nothing
    assert np.array_equal(neighbour_mean(graph, m, order), (graph @ m).toarray())


def test_the_callers_layers_are_left_as_they_were():
    import scipy.sparse as sp

    rng = np.random.default_rng(5)
    counts = sp.random(200, 60, density=0.5, random_state=6, format="csr", dtype=np.float32)
    counts.data = np.ceil(counts.data * 20)
    spliced, unspliced = counts.copy(), counts.copy()
    # a non-canonical layer too: unsorted column indices within rows
    order = np.concatenate([rng.permutation(np.arange(a, b)) for a, b in zip(unspliced.indptr, unspliced.indptr[1:])])
    unspliced = sp.csr_matrix((unspliced.data[order], unspliced.indices[order], unspliced.indptr), shape=(200, 60))
    before = [(m.data.copy(), m.indices.copy(), m.indptr.copy()) for m in (spliced, unspliced)]
    prepare(spliced, unspliced, raw=True, n_top_genes=2000, n_neighbors=10)
    for m, (data, indices, indptr) in zip((spliced, unspliced), before):
        assert np.array_equal(m.data, data) and np.array_equal(m.indices, indices) and np.array_equal(m.indptr, indptr)


def test_neighbour_moments_are_scipys_products_of_the_elementwise_products(monkeypatch):
    import core.velocity.preprocess as preprocess

    monkeypatch.setattr(preprocess, "_MOMENT_COLUMNS", 2)  # several blocks, an uneven last one
    graph = sp.random(300, 300, density=0.05, random_state=7, dtype=np.float32, format="csr")
    s = sp.random(300, 40, density=0.5, random_state=8, dtype=np.float32, format="csr")
    u = sp.random(300, 40, density=0.3, random_state=9, dtype=np.float32, format="csr")
    columns = np.array([3, 0, 17, 39, 8])
    ss, su = preprocess.neighbour_moments(graph, s, u, columns)
    assert np.array_equal(ss, (graph @ s.multiply(s).tocsr()).toarray()[:, columns])
    assert np.array_equal(su, (graph @ s.multiply(u).tocsr()).toarray()[:, columns])
