"""The demo generator works in chunks of cells (core/data/demo.py) so that 100,000 x 2,000 fits in memory; the
chunk size must not change the data: the random draws come in the order of one whole-matrix draw, so integer
counts are identical, and floats differ only by the order of sums (mean, covariance, matrix products)."""

import numpy as np
import pytest

from core.data import demo

CELLS_PER_GROUP, GENES = 10, 200  # 120 burn/sham cells (60 burn), 78 atlas cells
CHUNK = 25 * GENES  # 25 cells a chunk: 25 x 4 + 20 burn/sham cells, 25 + 25 + 10 burn cells, 25 x 3 + 3 atlas cells


@pytest.fixture(scope="module")
def one_and_many():
    kw = dict(cells_per_group=CELLS_PER_GROUP, n_genes=GENES, atlas_cells_per_group=1, umap=False)
    return demo.generate(**kw), demo.generate(**kw, chunk_elements=CHUNK)


def _close(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * np.abs(b).max())


def test_chunks_cover_the_rows_once_with_an_uneven_last_chunk():
    chunks = demo._chunks(120, GENES, CHUNK)
    assert [(c.start, c.stop) for c in chunks] == [(0, 25), (25, 50), (50, 75), (75, 100), (100, 120)]
    assert [(c.start, c.stop) for c in demo._chunks(78, GENES, CHUNK)][-1] == (75, 78)
    # the default demo, 12,000 x 1,000, is one chunk: the path that made the cached files
    assert len(demo._chunks(12 * demo.CELLS_PER_GROUP, demo.N_GENES, demo.CHUNK_ELEMENTS)) == 1


def test_chunking_leaves_the_counts_identical(one_and_many):
    (whole, whole_atlas), (chunked, chunked_atlas) = one_and_many
    for layer in ("spliced", "unspliced"):
        a, b = whole.layers[layer], chunked.layers[layer]
        assert a.dtype == b.dtype == np.int32 and a.format == b.format == "csr"
        assert np.array_equal(a.toarray(), b.toarray()), layer
    # a real draw at the demo's depth (mean spliced counts per cell TARGET_DEPTH times the mean depth factor)
    assert whole.layers["spliced"].sum(1).mean() == pytest.approx(demo.TARGET_DEPTH, rel=0.25)
    # X is the log-normalised spliced counts, cell by cell: the same floats whatever the chunks
    assert np.array_equal(whole.X, chunked.X) and np.array_equal(whole_atlas.X, chunked_atlas.X)
    for key in ("true_latent_time", "true_sham_time", "true_burn_response"):
        assert np.array_equal(whole.obs[key], chunked.obs[key])


def test_chunking_changes_the_floats_only_by_rounding(one_and_many):
    (whole, whole_atlas), (chunked, chunked_atlas) = one_and_many
    _close(chunked.var["pca_mean"], whole.var["pca_mean"])
    _close(chunked.varm["PCs"], whole.varm["PCs"])
    _close(chunked.uns["pca"]["variance_ratio"], whole.uns["pca"]["variance_ratio"])
    for key in ("X_pca", "true_velocity_pca", "true_burn_effect_pca"):
        _close(chunked.obsm[key], whole.obsm[key])
    _close(chunked_atlas.obsm["X_pca"], whole_atlas.obsm["X_pca"])
    for ct, effect in whole.uns["true_burn_effect"].items():  # from the truth stream's sampled counts
        _close(chunked.uns["true_burn_effect"][ct], effect)
    for key in ("burn_alignment", "burn_cell_alignment", "burn_aligned_ratio", "response_mean"):
        _close(list(chunked.uns["demo"][key].values()), list(whole.uns["demo"][key].values()))
    assert chunked.uns["demo"]["burn_aligned_ratio_overall"] == pytest.approx(
        whole.uns["demo"]["burn_aligned_ratio_overall"], rel=1e-6)
    # not trivially equal: the data are a real draw (the PCA explains part of the variance, effects are non-zero)
    assert 0.2 < whole.uns["pca"]["variance_ratio"].sum() < 1.0
    assert np.linalg.norm(whole.obsm["true_burn_effect_pca"], axis=1).max() > 1.0
