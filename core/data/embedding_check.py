"""What an embedding (an obsm array the model learns in) must be: a dense, floating-point cells x dimensions
array with at least one dimension (issue 12, points 9 and 16). Integers look like counts or labels, an N x 0
array trains with a loss of exactly 0, and a sparse matrix has no meaningful ``shape`` once made an array."""

from __future__ import annotations

import numpy as np


def embedding_problem(value, n_obs: int) -> str | None:
    """What is wrong with ``value`` as an embedding of ``n_obs`` cells, as the end of a sentence that starts
    with its key; None when it can be used."""
    if hasattr(value, "tocsr") or type(value).__module__.startswith("scipy.sparse"):
        return ("is a sparse matrix; an embedding must be a dense array (adata.obsm[key] = "
                "adata.obsm[key].toarray())")
    z = np.asarray(value)
    if z.ndim != 2:
        return f"must be a cells x dimensions array; it has {z.ndim} dimension(s), shape {tuple(z.shape)}"
    if z.shape[0] != n_obs:
        return f"has {z.shape[0]} rows for {n_obs} cells"
    if z.shape[1] == 0:
        return f"has no dimensions (shape {tuple(z.shape)}); choose an embedding with at least two columns"
    if z.shape[1] == 1:  # anndata stores a 1-d vector (a score, a pseudotime) as N x 1
        return (f"has a single dimension (shape {tuple(z.shape)}): a per-cell score, not a latent space; choose "
                "an embedding with at least two columns, such as X_pca")
    if not np.issubdtype(z.dtype, np.floating):
        return (f"holds {z.dtype} values; an embedding must be floating point (integers look like counts or "
                "labels): choose a real embedding such as X_pca")
    return None


def embedding_warning(value) -> str | None:
    dtype = getattr(value, "dtype", None)
    if dtype is not None and dtype == np.float16:
        return "is float16; it is used as float32, with float16's precision (about 3 significant digits)"
    return None
