"""Exact k nearest neighbours of every cell, without comparing every pair of cells.

Brute force compares all n^2 pairs: at 100,000 cells in 30 PCs that is 10^10 distances, about 36 s on two cores
with scikit-learn, more than half of the velocity pipeline's budget. Cells lie on a few low-dimensional
trajectories, so most pairs are far apart and can be ruled out in groups: the cells are split into about
sqrt(n) clusters (a few rounds of k-means); for a cluster A of query cells and any other cluster B with
centre c_B and radius r_B (its farthest member), the triangle inequality gives |q - p| >= |q - c_B| - r_B for
every q in A and p in B. Each query's distance to its k-th nearest cell inside its own cluster (or the nearest
clusters, if its own is small) bounds its true k-th distance from above, so B can hold a neighbour of q only if
|q - c_B| - r_B <= that bound. Distances to the members of the clusters that survive (typically a sixth of all
pairs on the demo) give a float32 shortlist of k + 8 per query, ranked again exactly in float64, and the k
smallest are kept. The result is the same
neighbour set as brute force (up to ties), which ``tests/unit/test_neighbours.py`` checks against
scikit-learn's brute force.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
import scipy.sparse as sp
import torch

from core.velocity.threads import each_on_threads

_KMEANS_ROUNDS = 5
_MARGIN = 8  # float32 shortlist beyond k, re-ranked in float64


def _ranking_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|b_j|^2 - 2 a_i.b_j: in each row the order of the squared distances (|a_i|^2 is the row's constant), in
    one pass over the product instead of the three that adding |a_i|^2 and clamping at 0 took."""
    return torch.addmm((b * b).sum(1)[None, :], a, b.T, alpha=-2)


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _ranking_distances(a, b).add_((a * a).sum(1, keepdim=True)).clamp_min_(0)


@numba.njit(cache=True, nogil=True)
def _smallest(values, keep):  # pragma: no cover (compiled)
    """[rows, keep] positions of each row's ``keep`` smallest entries, ascending, the first of equal ones
    (``torch.topk(values, keep, largest=False).indices`` up to the order of ties). One pass with a sorted buffer,
    in blocks of 128 with a vectorised count first: a row's first entries are its own cluster, the nearest
    cells, so later blocks rarely hold one below the buffer's last (torch's top-k was 40% of the kNN at 100,000
    cells; this takes half its time there). Rows of a few hundred entries are faster with torch."""
    rows, cols = values.shape
    top = np.empty(keep, dtype=values.dtype)
    where = np.zeros((rows, keep), dtype=np.int64)
    for i in range(rows):
        row, at = values[i], where[i]
        top[:] = np.inf
        worst, filled = top[keep - 1], 0
        for start in range(0, cols, 128):
            stop = min(cols, start + 128)
            if filled == keep:
                below = 0
                for j in range(start, stop):
                    below += row[j] < worst
                if below == 0:
                    continue
            for j in range(start, stop):
                v = row[j]
                # until the buffer is full every entry goes in, inf ones too (a row with fewer finite entries than
                # keep, like torch, gives its inf positions last rather than leaving slots unset)
                if filled < keep or v < worst:
                    slot = filled if filled < keep else keep - 1
                    filled = min(filled + 1, keep)
                    while slot > 0 and top[slot - 1] > v:
                        top[slot] = top[slot - 1]
                        at[slot] = at[slot - 1]
                        slot -= 1
                    top[slot] = v
                    at[slot] = j
                    worst = top[keep - 1]
    return where


def _clusters(x: torch.Tensor, n_clusters: int) -> torch.Tensor:
    """Cluster label of every row after a few rounds of k-means from a fixed random start (the partition only
    decides which pairs are compared, never the answer, so a rough and reproducible one is enough)."""
    start = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:n_clusters]
    centres = x[start].clone()
    for _ in range(_KMEANS_ROUNDS):
        labels = _squared_distances(x, centres).argmin(1)
        counts = torch.bincount(labels, minlength=n_clusters)
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    return _squared_distances(x, centres).argmin(1)


def exact_knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distances [n, k] float32 ascending, indices [n, k] int64) of each row's k nearest other rows, as
    ``sklearn.neighbors.NearestNeighbors(n_neighbors=k, algorithm="brute").fit(x).kneighbors()`` gives them (the
    row itself excluded even when duplicated), and the rows grouped by cluster [n]: an order in which
    consecutive rows share most neighbours, which the neighbour sums use to read each row from cache."""
    threads = torch.get_num_threads()
    # the products per cluster are small: thread hand-offs cost more than they gain, far more on a busy machine
    # (10x slower with two threads than with one on two busy cores)
    torch.set_num_threads(1)
    try:
        return _exact_knn(x, k)
    finally:
        torch.set_num_threads(threads)


def _exact_knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(x)
    if not 0 < k < n:
        raise ValueError(f"k must be between 1 and {n - 1} for {n} cells; got {k}")
    x64 = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    labels = _clusters(x64.float(), max(1, int(np.sqrt(n)))).numpy()
    present = np.unique(labels)
    labels = np.searchsorted(present, labels)  # clusters 0..m-1, none empty
    m = len(present)
    centres = torch.zeros(m, x64.shape[1], dtype=torch.float64).index_add_(0, torch.from_numpy(labels), x64)
    centres /= torch.from_numpy(np.bincount(labels, minlength=m)).double()[:, None]
    from_centre = (x64 - centres[labels]).norm(dim=1).numpy()
    # members of each cluster, farthest from its centre first: a far query needs only a prefix of them
    order = np.lexsort((-from_centre, labels))
    starts = np.searchsorted(labels[order], np.arange(m + 1))
    members = [order[starts[c]:starts[c + 1]] for c in range(m)]
    shell = [from_centre[idx] for idx in members]  # descending within each cluster
    radius = torch.from_numpy(np.array([s[0] for s in shell]))
    centre_gap = torch.cdist(centres, centres)

    out_d = np.empty((n, k), dtype=np.float32)
    out_i = np.empty((n, k), dtype=np.int64)
    keep = min(n - 1, k + _MARGIN)
    def cluster(a: int) -> None:
        queries = members[a]
        q64 = x64[queries]
        # an upper bound on each query's k-th distance, exact, from its own cluster and the next nearest ones
        near, have = [a], len(queries)
        for b in torch.argsort(centre_gap[a]).tolist():
            if have > k:
                break
            if b != a:
                near.append(b)
                have += len(members[b])
        first = x64[np.concatenate([members[b] for b in near])]
        bound = torch.topk(_without_self(_squared_distances(q64, first), len(queries)), k, dim=1,
                           largest=False).values[:, -1].sqrt()
        to_centre = torch.cdist(q64, centres)
        lower = (to_centre - radius[None, :]).clamp_min(0)
        needed = [a] + [b for b in np.flatnonzero((lower <= bound[:, None]).any(0).numpy()) if b != a]
        # of cluster b, only members at least min_q(|q - c_b| - bound_q) from c_b can be that close to a query
        reach = (to_centre[:, needed] - bound[:, None]).min(0).values.numpy()
        parts = [members[a]] + [members[b][:np.searchsorted(-shell[b], -reach[j], side="right")]
                                for j, b in enumerate(needed) if j > 0]
        candidates = np.concatenate(parts)
        # float32 products about A's centre: the offsets are small, so the rounding of |p|^2 - 2 q.p stays small
        # against the distances that decide the shortlist
        origin = centres[a]
        d2 = _without_self(_ranking_distances((q64 - origin).float(), (x64[candidates] - origin).float()),
                           len(queries))
        shortlist = torch.from_numpy(candidates[_smallest(d2.numpy(), min(keep, d2.shape[1]))])
        # exact float64 distances decide the order among the shortlist, as brute force in float64 would
        exact = (x64[shortlist] - q64[:, None, :]).square().sum(2)
        exact[shortlist == torch.from_numpy(queries)[:, None]] = float("inf")
        best, pos = torch.topk(exact, k, dim=1, largest=False, sorted=True)
        out_d[queries] = best.sqrt().numpy()
        out_i[queries] = shortlist.gather(1, pos).numpy()

    # clusters side by side (core/velocity/threads.py), each writing only its own queries' rows; one intra-op
    # thread per cluster keeps away the hand-offs that made two torch threads slower (see exact_knn)
    each_on_threads(cluster, range(m))
    return out_d, out_i, order


def _without_self(d2: torch.Tensor, n_queries: int) -> torch.Tensor:
    """The queries are the first columns of their own candidate list: a cell is not its own neighbour."""
    d2.diagonal()[:n_queries] = float("inf")
    return d2


class Neighbours(NamedTuple):
    distances: sp.csr_matrix  # [n, n] the n_neighbors - 1 nearest other cells per row
    connectivities: sp.csr_matrix  # [n, n] 1 on the symmetrised kNN graph
    indices: np.ndarray  # [n, n_neighbors - 1] nearest first
    order: np.ndarray  # [n] cells grouped by cluster (exact_knn)


def knn_graph(x: np.ndarray, n_neighbors: int) -> Neighbours:
    """The exact kNN graph as ``sc.pp.neighbors(n_neighbors, transformer="sklearn")`` stores it, without
    its UMAP weights. scvelo binarises the connectivities (``get_connectivities``), so their support is all
    it uses, and it equals the support of scanpy's UMAP connectivities; skipping UMAP's fuzzy set also skips
    its numba compilation (about 5 s of CPU in each new process)."""
    n, k = len(x), n_neighbors - 1
    dist, idx, order = exact_knn(x, k)
    indptr = np.arange(0, n * k + 1, k)
    distances = sp.csr_matrix((dist.ravel().astype(np.float32), idx.ravel(), indptr), shape=(n, n))
    distances.sort_indices()
    adj = sp.csr_matrix((np.ones(n * k, dtype=np.float32), idx.ravel(), indptr), shape=(n, n))
    connectivities = ((adj + adj.T) > 0).astype(np.float32).tocsr()
    return Neighbours(distances, connectivities, idx, order)
