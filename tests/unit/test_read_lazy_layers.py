"""``read_h5ad(path, backed=True, lazy_layers=True)``, the app's reader: sparse layers stay on disk until used,
and what is read from them equals what was written."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata.abc import CSRDataset

from core.data.io import read_h5ad
from core.errors import DataError


def _written(tmp_path, raw: bool = False):
    rng = np.random.default_rng(3)
    n, g = 40, 12
    adata = ad.AnnData(
        X=rng.random((n, g), dtype=np.float32),
        obs=pd.DataFrame({"condition": pd.Categorical(rng.choice(["sham", "burn"], n)),
                          "score": rng.random(n)}, index=[f"c{i}" for i in range(n)]),
        var=pd.DataFrame(index=[f"g{j}" for j in range(g)]),
        layers={"spliced": sp.random(n, g, 0.3, format="csr", random_state=1, dtype=np.float32),
                "dense": rng.random((n, g))},
        obsm={"X_pca": rng.random((n, 5), dtype=np.float32)})
    adata.uns["note"] = "kept"
    if raw:
        adata.raw = adata
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    return adata, path


def test_sparse_layers_stay_on_disk_and_read_back_equal(tmp_path):
    written, path = _written(tmp_path)
    lazy = read_h5ad(path, backed=True, lazy_layers=True)
    assert lazy.isbacked and lazy.shape == (40, 12)
    assert isinstance(lazy.layers["spliced"], CSRDataset)  # not read yet
    assert isinstance(lazy.layers["dense"], np.ndarray)    # dense layers are read now, as anndata does
    pd.testing.assert_frame_equal(lazy.obs, written.obs)
    np.testing.assert_array_equal(lazy.obsm["X_pca"], written.obsm["X_pca"])
    assert lazy.uns["note"] == "kept" and list(lazy.var_names) == list(written.var_names)
    np.testing.assert_array_equal(lazy[:, ["g3"]].X.ravel(), written.X[:, 3])
    # what the velocity panel does before computing: everything in memory, the counts as written
    memory = lazy.to_memory()
    assert sp.issparse(memory.layers["spliced"])
    assert (memory.layers["spliced"] != written.layers["spliced"]).nnz == 0
    np.testing.assert_array_equal(memory.layers["dense"], written.layers["dense"])
    np.testing.assert_array_equal(memory.X, written.X)
    rows = lazy[5:9].to_memory()  # a slice reads only its rows of the layer
    np.testing.assert_array_equal(rows.layers["spliced"].toarray(), written.layers["spliced"][5:9].toarray())


def test_without_lazy_layers_the_layers_are_in_memory(tmp_path):
    _, path = _written(tmp_path)
    assert sp.issparse(read_h5ad(path, backed=True).layers["spliced"])


def test_a_file_with_raw_is_read_by_anndata_itself(tmp_path):
    written, path = _written(tmp_path, raw=True)
    lazy = read_h5ad(path, backed=True, lazy_layers=True)
    assert lazy.raw is not None and lazy.raw.shape == written.raw.shape
    assert sp.issparse(lazy.layers["spliced"])


def test_a_truncated_file_is_one_line(tmp_path):
    _, path = _written(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as err:
        read_h5ad(path, backed=True, lazy_layers=True)
    assert "cells.h5ad" in str(err.value) and "\n" not in str(err.value)
