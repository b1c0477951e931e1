"""The fast engine's preprocessing: scvelo's and scanpy's steps up to the first-order moments, on plain arrays.

The scvelo engine (``pipeline._preprocess``) builds an AnnData and lets ``scv.pp.filter_and_normalize``,
``sc.pp.log1p``, ``sc.pp.highly_variable_genes``, ``sc.pp.pca``, ``sc.pp.neighbors`` and ``scv.pp.moments`` work
on it; at 100,000 cells that costs about two minutes, most of it in copies of the AnnData made at each gene
subset, an iterative sparse PCA, brute-force neighbours and sparse-by-sparse products. Here the same arithmetic
runs on the CSR matrices directly:

- filter and normalise (scvelo ``filter_genes(min_shared_counts=20)`` and ``normalize_per_cell``): genes with
  >= 20 counts summed over the cells where both their spliced and unspliced counts are > 0; each layer divided
  by its cell's initial (unfiltered) size over the median size, in float32 as scvelo does;
- log1p of X (the normalised spliced counts) and scanpy's highly variable genes on it, when there are more genes
  than ``n_top_genes``;
- 30 principal components of X from the gene-by-gene covariance (accumulated over chunks of centred cells,
  then an eigendecomposition): the subspace scanpy's ARPACK solver converges to, directly;
- exact neighbours (``core/velocity/neighbours.py``) and the moments as the neighbour graph times a dense copy
  of each layer (``neighbour_mean``, row-parallel, summing in the same order as scipy's product, so Ms and Mu
  are scvelo's to the last bit).

``tests/integration/test_velocity_engines.py`` holds the two engines to the same per-gene velocities, latent
velocity and confidence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numba
import numpy as np
import scipy.sparse as sp

from core.errors import DataError
from core.velocity.neighbours import knn_graph
from core.velocity.threads import each_on_threads, ranges

_CHUNK_ELEMENTS = 20_000_000  # dense rows per covariance chunk: ~80 MB of float32
_MOMENT_COLUMNS = 512  # genes per dense block of the second moments: 0.2 GB at 100,000 cells


@dataclass
class Prepared:
    """What the fast engine's velocity steps need, all rows in the input's order."""

    spliced: sp.csr_matrix | None  # [n, g] normalised (float32), genes after filtering; None: without_counts
    unspliced: sp.csr_matrix | None
    gene_index: np.ndarray  # [g] column of each kept gene in the input
    highly_variable: np.ndarray | None  # [g] when highly variable genes were chosen (all True after the subset)
    distances: sp.csr_matrix  # [n, n] the k - 1 nearest other cells per row
    connectivities: sp.csr_matrix  # [n, n] 1 on the symmetrised kNN graph
    moments_graph: sp.csr_matrix  # [n, n] scvelo's get_connectivities: row-normalised, with self
    knn: np.ndarray  # [n, k - 1]
    order: np.ndarray  # [n] cells grouped by cluster: neighbour sums in this order read rows from cache
    Ms: np.ndarray  # [n, g] float32
    Mu: np.ndarray | None
    n_pcs: int
    n_neighbors: int

    def without_counts(self) -> Prepared:
        """The same without the normalised layers and Mu, which nothing needs after the stochastic velocity."""
        return replace(self, spliced=None, unspliced=None, Mu=None)

    def as_anndata(self):
        """An AnnData that scvelo's own functions (``recover_dynamics``, ``velocity``, ``transition_matrix``)
        accept; it shares the arrays, nothing is copied."""
        import anndata as ad
        import pandas as pd

        var = pd.DataFrame({"gene_index": self.gene_index}, index=[str(i) for i in self.gene_index])
        if self.highly_variable is not None:
            var["highly_variable"] = self.highly_variable
        work = ad.AnnData(X=self.spliced, var=var,
                          obs=pd.DataFrame(index=[str(i) for i in range(self.spliced.shape[0])]))
        work.layers.update(spliced=self.spliced, unspliced=self.unspliced, Ms=self.Ms, Mu=self.Mu)
        work.obsp["distances"], work.obsp["connectivities"] = self.distances, self.connectivities
        work.uns["neighbors"] = {"connectivities_key": "connectivities", "distances_key": "distances",
                                 "params": {"n_neighbors": self.n_neighbors, "method": "umap",
                                            "metric": "euclidean", "n_pcs": self.n_pcs}}
        return work


def prepare(spliced, unspliced, raw: bool, n_top_genes: int, n_neighbors: int,
            step: Callable[[str], None] = lambda name: None) -> Prepared:
    """Filter, normalise, choose genes, embed, find neighbours and take the moments (see the module docstring).
    ``raw``: the layers hold counts (otherwise they are used as they are, as scvelo does with processed
    layers). ``step(name)`` is called after 'normalise', 'neighbours' and 'moments'."""
    s, u = _float32_copy(spliced), _float32_copy(unspliced)
    genes = np.arange(s.shape[1])
    if raw:
        s_size, u_size = _row_sums(s), _row_sums(u)
        genes = np.flatnonzero(_shared_counts(s, u) >= 20)
        if len(genes) < 10:
            raise DataError(f"only {len(genes)} genes have >= 20 spliced+unspliced counts; velocity needs more "
                            "cells or deeper counts")
        if len(genes) < s.shape[1]:
            s, u = s[:, genes], u[:, genes]
        _normalise_rows(s, s_size)
        _normalise_rows(u, u_size)
        x = _with_data(s, _log1p(s.data))
    else:
        x = s
    highly_variable = None
    if n_top_genes < len(genes):
        keep = _highly_variable(x, n_top_genes)
        genes, s, u, x = genes[keep], s[:, keep], u[:, keep], x[:, keep]
        highly_variable = np.ones(len(genes), dtype=bool)
    step("normalise")
    n_pcs = min(30, len(genes) - 1, s.shape[0] - 1)
    n_neighbors = min(n_neighbors, s.shape[0] - 1)
    scores = principal_components(x, n_pcs)
    del x  # the log values are needed for the embedding only
    neighbours = knn_graph(scores, n_neighbors)
    step("neighbours")
    graph = moments_graph(neighbours.connectivities)
    Ms, Mu = neighbour_mean(graph, s, neighbours.order), neighbour_mean(graph, u, neighbours.order)
    step("moments")
    return Prepared(spliced=s, unspliced=u, gene_index=genes, highly_variable=highly_variable,
                    distances=neighbours.distances, connectivities=neighbours.connectivities, moments_graph=graph,
                    knn=neighbours.indices, order=neighbours.order, Ms=Ms, Mu=Mu, n_pcs=n_pcs,
                    n_neighbors=n_neighbors)


def _float32_copy(m) -> sp.csr_matrix:
    """The layer as CSR float32 with its own values (they are normalised in place) and, when it already is
    canonical CSR, the caller's index arrays (copying them is 2 x 0.5 GB at 100,000 cells). Only canonical:
    scipy sorts a matrix's indices in place when it needs them sorted, which would scramble the caller's."""
    if sp.issparse(m) and m.format == "csr" and m.has_canonical_format:
        return _with_data(m, _float32_values(m.data))
    return sp.csr_matrix(m, dtype=np.float32, copy=True)


def _in_blocks(values: np.ndarray, apply: Callable[[np.ndarray, np.ndarray], object]) -> np.ndarray:
    """A new float32 array, ``apply(block of values, its block of the output)`` for blocks side by side: for
    numpy's elementwise loops, which give each value the same bits in any block (one core took 3.3 s for log1p
    and 1.5 s for the float32 copies of the 100,000-cell file's 127 M values)."""
    out = np.empty(len(values), dtype=np.float32)
    block = 1 << 22

    def part(start):
        apply(values[start:start + block], out[start:start + block])

    each_on_threads(part, range(0, len(values), block))
    return out


def _float32_values(values: np.ndarray) -> np.ndarray:
    return _in_blocks(values, lambda part, out: np.copyto(out, part, casting="unsafe"))  # astype's cast


def _log1p(values: np.ndarray) -> np.ndarray:
    return _in_blocks(values, lambda part, out: np.log1p(part, out=out))


def _with_data(m: sp.csr_matrix, data: np.ndarray) -> sp.csr_matrix:
    return sp.csr_matrix((data, m.indices, m.indptr), shape=m.shape)


def _row_sums(m: sp.csr_matrix) -> np.ndarray:
    return np.asarray(m.sum(1)).ravel()  # scipy's own sum, as scvelo's initial sizes are


def _shared_counts(s: sp.csr_matrix, u: sp.csr_matrix) -> np.ndarray:
    """Per gene, spliced + unspliced counts summed over the cells where both are > 0 (scvelo's 'shared')."""
    s, u = _sorted(s), _sorted(u)
    # cells split between threads, each summing into its own array: counts are integers, so the sums are exact
    # in float64 whatever their order (and the result only meets a threshold)
    cells = ranges(s.shape[0])
    parts = np.zeros((len(cells), s.shape[1]), dtype=np.float64)
    each_on_threads(lambda i: _shared_kernel(s.indptr, s.indices, s.data, u.indptr, u.indices, u.data,
                                             *cells[i], parts[i]), range(len(cells)))
    return parts.sum(0)


def _sorted(m: sp.csr_matrix) -> sp.csr_matrix:
    if not m.has_sorted_indices:
        m = m.copy()
        m.sort_indices()
    return m


@numba.njit(cache=True, nogil=True)
def _shared_kernel(s_ptr, s_idx, s_val, u_ptr, u_idx, u_val, first, last, out):  # pragma: no cover (compiled)
    for i in range(first, last):
        a, b = s_ptr[i], u_ptr[i]
        while a < s_ptr[i + 1] and b < u_ptr[i + 1]:
            if s_idx[a] < u_idx[b]:
                a += 1
            elif s_idx[a] > u_idx[b]:
                b += 1
            else:
                if s_val[a] > 0 and u_val[b] > 0:
                    out[s_idx[a]] += s_val[a] + u_val[b]
                a += 1
                b += 1


def _normalise_rows(m: sp.csr_matrix, initial_size: np.ndarray) -> None:
    """scvelo ``normalize_per_cell`` with its defaults: divide by initial size / its median, in place."""
    counts_after = np.median(initial_size)
    counts_after += counts_after == 0
    counts = initial_size / counts_after
    counts += counts == 0
    _scale_rows(m.indptr, m.data, 1 / counts)


@numba.njit(parallel=True, cache=True)
def _scale_rows(indptr, values, scale):  # pragma: no cover (compiled)
    # scikit-learn's inplace_row_scale (what scvelo calls), values *= np.repeat(scale, row lengths): the float64
    # product rounded to the values' dtype, the same bits, without the repeated array (1.2 s at 100,000 cells)
    for i in numba.prange(len(indptr) - 1):
        for e in range(indptr[i], indptr[i + 1]):
            values[e] = values[e] * scale[i]


def _highly_variable(x: sp.csr_matrix, n_top: int) -> np.ndarray:
    """scanpy's ``highly_variable_genes(n_top_genes=n_top)`` (flavour 'seurat') on log data, as a mask."""
    import anndata as ad
    import scanpy as sc

    table = sc.pp.highly_variable_genes(ad.AnnData(X=x), n_top_genes=n_top, inplace=False)
    return table["highly_variable"].to_numpy(dtype=bool)


def principal_axes(x, n_comps: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean [g], axes [g, n_comps]) of the rows of x (sparse or dense), largest variance first. The covariance
    is summed over dense chunks of centred rows (float32 products, float64 sum of the chunks: centring first keeps
    float32's rounding relative to the variances, not to the means); only the kept eigenpairs are computed."""
    from scipy.linalg import eigh

    n, g = x.shape
    rows = max(1, _CHUNK_ELEMENTS // max(g, 1))
    if sp.issparse(x):
        x = sp.csr_matrix(x)
        mean = np.zeros(g)
        _column_sums(x.indices, x.data, mean)
        mean /= n
    else:
        mean = np.asarray(x).sum(0, dtype=np.float64) / n
    mean32 = mean.astype(np.float32)
    cov = np.zeros((g, g))
    for start in range(0, n, rows):
        chunk = _dense_block(x, start, start + rows) if sp.issparse(x) else np.array(x[start:start + rows],
                                                                                     dtype=np.float32)
        chunk -= mean32
        cov += chunk.T @ chunk
    cov /= max(n - 1, 1)
    eigval, eigvec = eigh(cov, subset_by_index=[g - n_comps, g - 1])
    axes = eigvec[:, np.argsort(eigval)[::-1]]
    # scikit-learn's sign (svd_flip on the components): each axis's largest loading positive. Signs matter
    # downstream: the velocity graph centres each cell's coordinates over the axes
    axes *= np.sign(axes[np.abs(axes).argmax(0), np.arange(axes.shape[1])])
    return mean, axes


@numba.njit(cache=True)
def _column_sums(indices, values, out):  # pragma: no cover (compiled)
    # the float64 sums scipy's sum(0) of a float64 copy gives, in its order (the same bits), without the copy:
    # converting 127 M values took 1-3 s at 100,000 cells
    for e in range(len(indices)):
        out[indices[e]] += np.float64(values[e])


def principal_components(x, n_comps: int) -> np.ndarray:
    """[n, n_comps] float32 scores of the centred rows of x on their top principal axes."""
    mean, axes = principal_axes(x, n_comps)
    # float32 products: the scores only order distances, and float64 would convert all of x first
    axes32 = axes.astype(np.float32)
    if sp.issparse(x) and x.dtype == np.float32:
        # scipy's float32 product (its adds in its order: the same bits), rows in parallel: 1.7 s on one core
        # at 100,000 cells
        x = sp.csr_matrix(x)
        product = np.zeros((x.shape[0], n_comps), dtype=np.float32)
        _dense_rows(np.arange(x.shape[0]), x.indptr, x.indices, x.data, axes32, product)
    else:
        product = x @ axes32
    return (np.asarray(product, dtype=np.float64) - mean @ axes).astype(np.float32)


def moments_graph(connectivities: sp.csr_matrix) -> sp.csr_matrix:
    """scvelo ``get_connectivities``: the binarised graph with self-loops, rows divided by their degree."""
    graph = (connectivities > 0).astype(np.float64)
    graph.setdiag(0)  # so that adding the identity sets the diagonal to 1, as scvelo's setdiag(1) does
    graph.eliminate_zeros()
    graph = (graph + sp.identity(graph.shape[0], format="csr")).tocsr()
    graph = graph.multiply(1.0 / graph.sum(1))
    return sp.csr_matrix(graph).astype(np.float32)


def neighbour_mean(graph: sp.csr_matrix, m, order: np.ndarray | None = None) -> np.ndarray:
    """graph @ m as a dense float32 array, rows in parallel, adding in scipy's order (the same bits as scipy's
    product). m is made dense first: a whole-row multiply-add vectorises, a sparse row's scattered adds do
    not (5x faster at 100,000 cells, for one cells x genes float32 array more while it runs). Each row reads
    the rows of its neighbours: in ``order`` (cells grouped so that consecutive ones share neighbours) those
    reads come from cache."""
    graph = sp.csr_matrix(graph, dtype=np.float32)
    dense = np.ascontiguousarray(_dense_block(sp.csr_matrix(m), 0, m.shape[0]) if sp.issparse(m) else m,
                                 dtype=np.float32)
    order = np.arange(graph.shape[0]) if order is None else np.asarray(order, dtype=np.int64)
    out = np.zeros((graph.shape[0], dense.shape[1]), dtype=np.float32)
    _dense_rows(order, graph.indptr, graph.indices, graph.data, dense, out)
    return out


@numba.njit(parallel=True, cache=True)
def _dense_rows(order, a_ptr, a_idx, a_val, dense, out):  # pragma: no cover (compiled)
    for r in numba.prange(len(order)):
        i = order[r]
        row = out[i]
        for e in range(a_ptr[i], a_ptr[i + 1]):
            w, source = a_val[e], dense[a_idx[e]]
            for f in range(dense.shape[1]):
                row[f] += w * source[f]


def neighbour_moments(graph: sp.csr_matrix, s: sp.csr_matrix, u: sp.csr_matrix, columns: np.ndarray,
                      order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(graph @ (s * s)[:, columns], graph @ (s * u)[:, columns]) as dense float32 arrays (elementwise
    products), the second moments of the stochastic model. Taken ``_MOMENT_COLUMNS`` columns at a time, so
    that the dense copies stay small; same summation order (and bits) as scipy's products."""
    n = graph.shape[0]
    ss = np.empty((n, len(columns)), dtype=np.float32)
    su = np.empty((n, len(columns)), dtype=np.float32)
    s, u = sp.csr_matrix(s, dtype=np.float32), sp.csr_matrix(u, dtype=np.float32)
    for start in range(0, len(columns), _MOMENT_COLUMNS):
        block = columns[start:start + _MOMENT_COLUMNS]
        s_block, u_block = _dense_columns(s, block), _dense_columns(u, block)
        u_block *= s_block
        su[:, start:start + len(block)] = neighbour_mean(graph, u_block, order)
        s_block *= s_block
        ss[:, start:start + len(block)] = neighbour_mean(graph, s_block, order)
    return ss, su


def _dense_columns(m: sp.csr_matrix, columns: np.ndarray) -> np.ndarray:
    """``m[:, columns].toarray()`` for distinct ``columns``, in one pass over the stored values, without the
    intermediate sparse matrix (scipy's column selection took about 0.5 s per call on 127 M values); the same
    values."""
    position = np.full(m.shape[1], -1, dtype=np.int64)
    position[columns] = np.arange(len(columns))
    out = np.zeros((m.shape[0], len(columns)), dtype=np.float32)
    _scatter_columns(m.indptr, m.indices, m.data, position, out)
    return out


def _dense_block(m: sp.csr_matrix, start: int, stop: int) -> np.ndarray:
    """Rows start:stop of m dense: ``m[start:stop].toarray()``, its values and dtype (duplicates added in storage
    order). float32, what the pipeline passes, takes rows in parallel and no sliced copy (scipy's slice and
    toarray of the 100,000-cell file took 2.7 s in the PCA and 2.2 s in the moments, on one core)."""
    if m.dtype != np.float32:  # the kernel adds in float32
        return m[start:stop].toarray()
    stop = min(stop, m.shape[0])
    out = np.zeros((stop - start, m.shape[1]), dtype=np.float32)
    _scatter_columns(m.indptr[start:stop + 1], m.indices, m.data, np.arange(m.shape[1]), out)
    return out


@numba.njit(parallel=True, cache=True)
def _scatter_columns(indptr, indices, values, position, out):  # pragma: no cover (compiled)
    for i in numba.prange(len(indptr) - 1):
        for e in range(indptr[i], indptr[i + 1]):
            p = position[indices[e]]
            if p >= 0:
                out[i, p] += values[e]
