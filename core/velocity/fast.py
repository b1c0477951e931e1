"""Vectorised twins of scvelo 0.3.4's stochastic velocity, velocity graph, embedding and confidence.

scvelo loops over genes (a 1x1 ``pinv`` per gene) and over cells (one small cosine block per cell); the
same arithmetic done as whole-array and sparse-matrix operations gives the same numbers several times
faster. Each function names the scvelo function it reproduces; ``tests/integration/test_velocity_engines.py`` checks
that the latent velocity agrees with scvelo's per cell (cosine >= 0.99) on the demo.

Shapes: n cells, g genes, p features of the graph space (30 PCs of Ms, or the velocity genes), k
neighbours per cell (the kNN graph without the cell itself), d latent dimensions.
    Ms, Mu        [n, g]  first-order moments (neighbourhood means) of normalised spliced/unspliced counts
    velocity      [n, g]  gene-level RNA velocity, u - gamma s (scvelo's steady-state units, beta = 1)
    knn           [n, k]  neighbour indices
    graph         [n, n]  sparse cosine between each cell's velocity and its displacements to its
                          neighbours and their neighbours (positive part; the negative part separately)
    T             [n, n]  sparse transition matrix derived from the graph (scvelo's transition_matrix)
    z             [n, d]  the latent embedding the velocity is projected into
"""

from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp

from core.velocity.columns import gene_rows
from core.velocity.preprocess import neighbour_moments
from core.velocity.threads import each_on_threads

_PERCENTILE = 95  # scvelo's perc=[5, 95] without offsets uses only the upper quantile
_GENE_BLOCK = 64  # genes handled at once: their columns, cells contiguous, stay in cache
_CELL_BLOCK = 4096  # cells x genes arithmetic in blocks of rows: 32 MB of float32 at 2,000 genes


def _extreme_norm(x: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
    """What scvelo ranks cells by for its extreme quantiles (``optimization.get_weight`` and
    ``LinearRegression._trim_data``): s, or s/max(s) + u/max(u) when u is given. Genes-by-cells [b, n]."""
    if y is None:
        return x
    return x / np.clip(x.max(1), 1e-3, None)[:, None] + y / np.clip(y.max(1), 1e-3, None)[:, None]


def _upper_quantile(norm: np.ndarray) -> np.ndarray:
    """[b] the per-gene threshold of the upper 5% of cells: the extreme quantile is norm >= it."""
    return np.percentile(norm, _PERCENTILE, axis=1)


def _cellsum(values: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
    """Sum over cells (axis 1 of genes-by-cells) in float64: float32 sums of 100k cells lose digits."""
    return np.sum(values, axis=1, dtype=np.float64, where=True if where is None else where)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = num / den
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def _each_gene_block(genes: np.ndarray, cells_by_genes: tuple, fn) -> None:
    """fn(positions in ``genes``, block of gene columns, each array's block as genes-by-cells contiguous float32)
    for every block of ``_GENE_BLOCK`` genes, side by side (``core/velocity/threads.py``): fn writes only its own
    genes' entries."""
    def run(start):
        block = genes[start:start + _GENE_BLOCK]
        fn(slice(start, start + len(block)), block,
           [gene_rows(m, block) for m in cells_by_genes])

    each_on_threads(run, range(0, len(genes), _GENE_BLOCK))


def stochastic_velocity(Ms, Mu, spliced, unspliced, connectivities, highly_variable=None, min_r2: float = 0.01,
                        min_ratio: float = 0.01, order: np.ndarray | None = None):
    """scvelo ``tl.velocity(mode="stochastic")`` with its defaults (no offsets, perc=[5, 95]).

    1. Steady-state ratio per gene on the extreme quantiles: gamma_0 = sum(w s u) / sum(w s^2).
    2. Velocity genes: R^2 of u - gamma_0 s above ``min_r2``, gamma_0 above ``min_ratio``, expressed.
    3. For those genes, the generalised least squares of Bergen et al. 2020 (stochastic model), stacking the
       first moments (u on s, extreme quantiles) and the second moments (2<su> + u on 2<ss> - s, all cells),
       each block scaled by the standard deviation of its own residual. The second moments are
       connectivities @ (s * s) and connectivities @ (s * u) of the normalised counts, for those genes only.
    Every step is per gene, so genes are taken ``_GENE_BLOCK`` at a time, cells contiguous: the only cells x genes
    arrays are the two neighbour sums of the second moments and the result (each temporary was 0.8 GB at
    100,000 cells, and much of the time went to the page faults of allocating them).
    Returns velocity [n, g] = Mu - gamma Ms, velocity_genes [g] and gamma [g]. ``order``: see
    ``preprocess.neighbour_mean`` (speed only).
    """
    g = Ms.shape[1]
    gamma, r2, res_std = np.zeros(g), np.zeros(g), np.zeros(g)
    expressed = np.zeros(g, dtype=bool)
    mu_mean = np.asarray(Mu, dtype=np.float32).mean(0)  # float32 over axis 0, as scvelo's R^2 takes it
    upper = np.zeros(g)  # each gene's threshold on _extreme_norm(s, u), used again by the second pass

    def first_pass(_, block, arrays):
        s, u = arrays
        norm = _extreme_norm(s, u)
        upper[block] = _upper_quantile(norm)
        w = norm >= upper[block][:, None]
        gamma[block] = _ratio(_cellsum(s * u, w), _cellsum(s * s, w))
        residual = u - gamma[block].astype(np.float32)[:, None] * s
        with np.errstate(divide="ignore", invalid="ignore"):
            r2[block] = 1 - _cellsum(residual * residual) / _cellsum(np.square(u - mu_mean[block][:, None]))
        res_std[block] = residual.std(1, dtype=np.float64)
        expressed[block] = (s > 0).any(1) & (u > 0).any(1)

    _each_gene_block(np.arange(g), (Ms, Mu), first_pass)
    r2 = np.nan_to_num(r2, nan=0.0)
    genes = (r2 > min_r2) & (gamma > min_ratio) & expressed
    if highly_variable is not None:
        genes &= np.asarray(highly_variable, dtype=bool)
    if genes.sum() < 2:  # scvelo's fallback for weak splicing signal
        genes = r2 > np.percentile(r2, 80)

    idx = np.flatnonzero(genes) if genes.any() else np.arange(len(genes))
    ss, su = neighbour_moments(connectivities, spliced, unspliced, idx, order)  # [n, len(idx)] each

    def second_pass(at, block, arrays):  # ss and su have a column per entry of idx: at
        s, u = arrays
        columns = np.arange(at.start, at.stop)
        var_ss = 2 * gene_rows(ss, columns) - s
        cov_us = 2 * gene_rows(su, columns) + u
        gamma2 = _ratio(_cellsum(var_ss * cov_us), _cellsum(var_ss * var_ss))
        res2_std = (cov_us - gamma2.astype(np.float32)[:, None] * var_ss).std(1, dtype=np.float64)
        w = (_extreme_norm(s, u) >= upper[block][:, None]) | (s >= _upper_quantile(s)[:, None])
        # gamma = (x'y) / (x'x) over the stacked, residual-scaled blocks
        num = _cellsum(s * u, w) / res_std[block] ** 2 + _cellsum(var_ss * cov_us) / res2_std**2
        den = _cellsum(s * s, w) / res_std[block] ** 2 + _cellsum(var_ss * var_ss) / res2_std**2
        gamma[block] = _ratio(num, den)

    _each_gene_block(idx, (Ms, Mu), second_pass)
    ss = su = None  # 1.6 GB at 100,000 cells, freed before the velocity's 0.8 GB
    return _velocity(np.asarray(Mu, dtype=np.float32), np.asarray(Ms, dtype=np.float32), gamma), genes, gamma


def _velocity(Mu: np.ndarray, Ms: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """Mu - gamma Ms in float32, blocks of cells side by side (the same bits; 1.7 s on one core at 100,000 cells)."""
    out = np.empty(Ms.shape, dtype=np.float32)
    gamma = gamma.astype(np.float32)

    def rows(start):
        part = out[start:start + _CELL_BLOCK]
        np.multiply(gamma, Ms[start:start + _CELL_BLOCK], out=part)
        np.subtract(Mu[start:start + _CELL_BLOCK], part, out=part)

    each_on_threads(rows, range(0, len(out), _CELL_BLOCK))
    return out


def _two_hop_support(knn: np.ndarray) -> sp.csr_matrix:
    """Each cell, its neighbours and their neighbours (scvelo ``get_iterative_indices``, 2 recursions), as the
    float32 CSR of ones with sorted indices that scipy's ``adj + I + adj @ (adj + I)`` gives: counted, then
    filled, rows in parallel (scipy's sparse sum and product took 2.9 s at 100,000 cells, on one core)."""
    n, k = knn.shape
    knn = np.ascontiguousarray(knn, dtype=np.int64)
    counts = np.zeros(n, dtype=np.int64)
    _two_hop_rows(knn, np.zeros(1, dtype=np.int64), counts, True)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    indices = np.empty(indptr[-1], dtype=np.int64)
    _two_hop_rows(knn, indptr, indices, False)
    index_type = np.int32 if n < 2**31 and len(indices) < 2**31 else np.int64  # scipy's choice
    return sp.csr_matrix((np.ones(len(indices), dtype=np.float32), indices.astype(index_type),
                          indptr.astype(index_type)), shape=(n, n))


@numba.njit(parallel=True, cache=True)
def _two_hop_rows(knn, indptr, out, count_only):  # pragma: no cover (compiled)
    # rows in blocks, each with its own marks: seen[j] == i + 1 when cell j is already in row i
    n, k = knn.shape
    block = 512
    for b in numba.prange((n + block - 1) // block):
        seen = np.zeros(n, dtype=np.int64)
        row = np.empty(1 + k + k * k, dtype=np.int64)
        for i in range(b * block, min(n, (b + 1) * block)):
            size = 0
            for a in range(-1, k):  # the cell itself (a = -1) and each neighbour, each with its own neighbours
                j = i if a < 0 else knn[i, a]
                for c in range(-1, k):
                    m = j if c < 0 else knn[j, c]
                    if seen[m] != i + 1:
                        seen[m] = i + 1
                        row[size] = m
                        size += 1
            if count_only:
                out[i] = size
            else:
                out[indptr[i]:indptr[i + 1]] = np.sort(row[:size])


# Rows in parallel: each cell's entries are its own, added in the same order as on one thread (the same bits).
@numba.njit(parallel=True, cache=True)
def _graph_kernel(indptr, indices, x, v, v_norm, active, sqrt_transform, vals):  # pragma: no cover (compiled)
    p = x.shape[1]
    for i in numba.prange(len(indptr) - 1):
        if not active[i]:
            continue
        dx = np.empty(p, dtype=np.float64)
        for e in range(indptr[i], indptr[i + 1]):
            j = indices[e]
            mean = 0.0
            for f in range(p):
                d = x[j, f] - x[i, f]
                if sqrt_transform:
                    d = np.sqrt(abs(d)) * np.sign(d)
                dx[f] = d
                mean += d
            mean /= p
            dot, sq = 0.0, 0.0
            for f in range(p):
                d = dx[f] - mean
                dot += d * v[i, f]
                sq += d * d
            vals[e] = dot / (np.sqrt(sq) * v_norm[i]) if sq > 0.0 and v_norm[i] > 0.0 else 0.0


def velocity_graph(x: np.ndarray, v: np.ndarray, knn: np.ndarray, sqrt_transform: bool,
                   ) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """scvelo ``tl.velocity_graph``'s cosines for all cells at once.

    For cell i and each j in its two-hop neighbourhood: cos(dx_ij - mean(dx_ij), v_i) with dx_ij = x_j - x_i,
    both variance-stabilised (sqrt |.| sign(.)) in stochastic mode; v is passed already transformed and
    row-centred as scvelo does. Cells whose velocity is exactly zero get no entries; a zero displacement
    (the cell itself, duplicates) gives 0. Returns the positive and the negative part, as scvelo stores them
    (``velocity_graph``, ``velocity_graph_neg``).
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    v = np.ascontiguousarray(v, dtype=np.float64)
    support = _two_hop_support(knn)
    vals = np.zeros(support.nnz, dtype=np.float64)
    _graph_kernel(support.indptr, support.indices, x, v, np.linalg.norm(v, axis=1), (v != 0).any(1),
                  bool(sqrt_transform), vals)
    vals = vals.astype(np.float32)
    shape = support.shape
    # each part gets its own index arrays: eliminate_zeros compacts them in place
    pos = sp.csr_matrix((np.clip(vals, 0, 1), support.indices.copy(), support.indptr.copy()), shape=shape)
    neg = sp.csr_matrix((np.clip(vals, -1, 0), support.indices.copy(), support.indptr.copy()), shape=shape)
    pos.eliminate_zeros()
    neg.eliminate_zeros()
    return pos, neg


def graph_inputs(Ms: np.ndarray, velocity: np.ndarray, approx: bool, sqrt_transform: bool):
    """The (x, v) that scvelo's ``VelocityGraph`` builds: with ``approx`` and more than 100 genes, the 30
    principal components of Ms (scanpy's arpack PCA, as scvelo calls it) and the velocity mapped by the
    same loadings; then v's variance stabilisation and row centring. This PCA stays scanpy's: the graph's
    square-root transform near zero turns the 1e-5 by which any two accurate PCAs differ into 20% for a few
    cells (an eigendecomposition of the covariance, tried in its place, moved one demo cell's v_z by 0.19)."""
    x, v = np.asarray(Ms, dtype=np.float32), np.asarray(velocity, dtype=np.float32)
    if approx and x.shape[1] > 100:
        from scanpy.preprocessing import pca

        x_pca, components, _, _ = pca(x, n_comps=30, svd_solver="arpack", return_info=True)
        zero = v.sum(1) == 0
        v = (v - v.mean(0)) @ components.T
        v[zero] = 0
        x = np.asarray(x_pca, dtype=np.float32)
    v = np.array(v, dtype=np.float32)
    if sqrt_transform:
        v = np.sqrt(np.abs(v)) * np.sign(v)
    v -= np.nanmean(v, axis=1, keepdims=True)
    return x, v


@numba.njit(parallel=True, cache=True)  # rows in parallel, each its own sums in the same order
def _projection_kernel(indptr, indices, probs, z, unit, latent):  # pragma: no cover (compiled)
    d = z.shape[1]
    for i in numba.prange(len(indptr) - 1):
        lo, hi = indptr[i], indptr[i + 1]
        if hi == lo:
            continue
        dz = np.empty(d, dtype=np.float64)
        p_bar = 0.0
        for e in range(lo, hi):
            p_bar += probs[e]
        p_bar /= hi - lo
        for e in range(lo, hi):
            j = indices[e]
            w = probs[e] - p_bar
            sq = 0.0
            for f in range(d):
                dz[f] = z[j, f] - z[i, f]
                sq += dz[f] * dz[f]
            norm = np.sqrt(sq)
            for f in range(d):
                latent[i, f] += w * dz[f]
                if norm > 0.0:  # a zero displacement (duplicated cells) has no direction: scvelo sets it to 0
                    unit[i, f] += w * dz[f] / norm


def transition_projection(T, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project velocities into the embedding z through the transition matrix T (self-transitions removed).

    With p_ij the transition probabilities over cell i's graph neighbours j and p_bar_i their mean:
        unit   v_i = sum_j (p_ij - p_bar_i) (z_j - z_i) / |z_j - z_i|   scvelo ``velocity_embedding``
        latent v_i = sum_j (p_ij - p_bar_i) (z_j - z_i)                 the same without unit-normalising
    Subtracting p_bar_i removes the drift an undirected walk over the same neighbours would have, so a
    velocity-blind T gives 0; the latent form keeps the units of z (no arbitrary rescaling).
    Returns (unit [n, d], latent [n, d]) in float32.
    """
    T = sp.csr_matrix(T, dtype=np.float64, copy=True)
    T.setdiag(0)
    T.eliminate_zeros()
    z = np.ascontiguousarray(z, dtype=np.float64)
    unit, latent = np.zeros_like(z), np.zeros_like(z)
    _projection_kernel(T.indptr, T.indices, T.data, z, unit, latent)
    return unit.astype(np.float32), latent.astype(np.float32)


def velocity_confidence(velocity: np.ndarray, knn: np.ndarray, order: np.ndarray | None = None,
                        genes: np.ndarray | None = None) -> np.ndarray:
    """scvelo ``tl.velocity_confidence``: the mean cosine between a cell's (row-centred) velocity and its
    k neighbours' velocities, clipped at 0. NaN where a velocity is zero, as in scvelo (a zero neighbour
    counts as 0). ``order``: cells grouped so that consecutive ones share neighbours (speed only); ``genes``: a
    mask of the genes to use (default all)."""
    # one copy (of the genes used), centred in place: no second cells x genes temporary. Rows contiguous: numpy
    # returns velocity[:, genes] in Fortran order (compress does not), and the kernel walking a cell's row through
    # that layout took 12 s instead of 0.7 s at 100,000 cells (a cache miss per value)
    if genes is None:
        v = np.array(velocity, dtype=np.float32, order="C")
    else:
        v = np.ascontiguousarray(np.asarray(velocity).compress(genes, axis=1), dtype=np.float32)
    v -= v.mean(1, keepdims=True, dtype=np.float64).astype(np.float32)
    norm = np.sqrt(np.einsum("ij,ij->i", v, v, dtype=np.float64))
    out = np.empty(len(v), dtype=np.float64)
    order = np.arange(len(v)) if order is None else np.asarray(order, dtype=np.int64)
    _confidence_kernel(order, v, norm, np.ascontiguousarray(knn, dtype=np.int64), out)
    return np.clip(out, 0, None)


@numba.njit(parallel=True, cache=True, fastmath={"reassoc", "contract"})  # reassociation lets the dot vectorise
def _confidence_kernel(order, v, norm, knn, out):  # pragma: no cover (compiled)
    k = knn.shape[1]
    for r in numba.prange(len(order)):
        i = order[r]
        if norm[i] == 0.0:
            out[i] = np.nan
            continue
        total = 0.0
        for e in range(k):
            j = knn[i, e]
            if norm[j] == 0.0:
                continue
            dot = 0.0
            for f in range(v.shape[1]):
                dot += np.float64(v[i, f]) * v[j, f]
            total += dot / (norm[i] * norm[j])
        out[i] = total / k
