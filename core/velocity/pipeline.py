"""RNA velocity from spliced/unspliced counts, projected into the latent space the model works in.

``compute_velocity(adata, basis="pca")`` runs the velocity pipeline on a private copy of the counts and
writes, scvelo-style (nothing else in ``adata`` changes):
    obsm[f"velocity_{basis}"]         v_z [n, d] in latent units: what the velocity-alignment loss uses
    obsm[f"velocity_{basis}_scvelo"]  scvelo's own ``velocity_embedding`` [n, d] (unit-normalised
                                      displacements: a direction, no latent units)
    obs["velocity_confidence"]        scvelo's per-cell velocity confidence in [0, 1] (coherence of a
                                      cell's velocity with its neighbours'; 0 where undefined)
    layers["velocity"]                gene-level velocity [n, g] (0 for genes the filter dropped or that
                                      dynamical mode did not fit)
    var["velocity_genes"]             genes scvelo kept for the graph (False for dropped genes)
    uns["velocity_params"]            mode, engine, parameters and the keys above, for provenance

The pipeline (FIELD_NOTES workarounds for scvelo 0.3.4 on this stack): normalise only raw counts
(``scv.pp.filter_and_normalize(min_shared_counts=20)``), log1p and highly variable genes with scanpy, PCA
(30) and exact neighbours (``transformer="sklearn"``: pynndescent fails at >= 4,096 cells), first-order
moments, then velocity in 'stochastic' mode (default; numpy pinned below 2.4) or 'dynamical' (scvelo's
``recover_dynamics`` on the ``dynamical_genes`` most expressed velocity genes: it costs about 0.1 s per
gene per 1,000 cells), the velocity graph with ``approx=True`` (30 PCs: 16x faster than the default with
nearly the same result), the transition matrix, the projection and the confidence.

Two engines. ``engine="scvelo"`` calls scvelo's and scanpy's functions for every step (the reference);
``engine="fast"`` (default) does the same arithmetic on plain arrays: ``core/velocity/preprocess.py`` up to
the moments (exact neighbours without comparing all pairs: ``core/velocity/neighbours.py``), then
``core/velocity/fast.py``. It agrees with scvelo per cell (v_z within 1.3e-6 relative on 2,400 demo cells;
tests/integration/test_velocity_engines.py) and takes about 51 s and 7.3 GB at 100,008 x 2,000 on 2 cores, where the
AnnData-based steps took 207 s and 12.7 GB (bench/README.md, target 3).

Projection into the latent space, chosen deliberately. Options measured on the demo (20k cells, stochastic
velocity, cosine to the true latent velocity ``obsm["true_velocity_pca"]``, mean over cells):
    scvelo velocity_embedding (unit displacements)                  0.73  (no latent units)
    sum_j (p_ij - p_bar_i) (z_j - z_i), scvelo's T (ours, kept)     0.72  |v| vs |true v| correlation 0.89
    same, but centred on the kNN graph (our first version)           0.63
    uncentred T z - z                                                 0.28
    gene velocity mapped by the PCA loadings (V @ PCs)              ~0.03 (per-gene velocity biases add up)
The kept form is scvelo's own projection formula without unit-normalising the displacements: the expected
displacement under the velocity-driven walk minus that of an undirected walk over the same neighbours. It
has latent units (a displacement of about one graph step, not per unit of time), so the loss's magnitude
term can use it; the direction agrees with scvelo's. The transition matrix is scvelo's (scale 10,
self-transitions, negative cosines pointing away), the same one ``velocity_embedding`` uses.

Results are cached in ``<cache_dir>/velocity/`` keyed by a hash of the counts, the embedding and every
parameter, so the app, the CLI and the trainer compute a given velocity once. ``save_with_velocity`` writes
a copy of a data set with these keys; the user's file is never overwritten. ``use_precomputed`` checks
velocities the user already has.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from core.errors import DataError
from core.io.atomic import atomic_write_with

Progress = Callable[[str, float], None] | None
ENGINES = ("fast", "scvelo")
MODES = ("stochastic", "dynamical")
DYNAMICAL_GENES = 100
_VERSION = 4  # bump when the computation changes, so old cache entries are not reused


def _cache_root() -> Path:
    from core.paths import cache_dir

    return cache_dir() / "velocity"


def _as_dense_f32(m) -> np.ndarray:
    return (m.toarray() if sp.issparse(m) else np.asarray(m)).astype(np.float32)


def _sample_rows(n: int, size: int) -> np.ndarray:
    return np.arange(n) if n <= size else np.sort(np.random.default_rng(0).choice(n, size, replace=False))


def check_layers(adata) -> None:
    """DataError with one line if spliced/unspliced are missing, empty, negative or not finite, or if their
    genes do not correspond to those of X (e.g. layers taken from another file in another gene order)."""
    missing = [k for k in ("spliced", "unspliced") if k not in adata.layers]
    if missing:
        raise DataError(
            f"RNA velocity needs layers 'spliced' and 'unspliced'; missing {missing}. Compute them with velocyto "
            "or STARsolo (Velocyto mode), or pick precomputed velocities instead"
        )
    rows = _sample_rows(adata.n_obs, 2000)
    sampled = {}
    for k in ("spliced", "unspliced"):
        layer = adata.layers[k]
        if layer.shape != adata.shape:
            raise DataError(f"layer '{k}' has shape {layer.shape} but X has {adata.shape}; they must match")
        values = layer.data if sp.issparse(layer) else np.asarray(layer)
        if not np.isfinite(values).all() or (values < 0).any():
            raise DataError(f"layer '{k}' has negative, NaN or inf values; it must hold counts (>= 0)")
        if not values.any():
            raise DataError(f"layer '{k}' is all zero; velocity needs real counts in it")
        sampled[k] = _as_dense_f32(layer[rows])
    if adata.X is not None:
        _check_genes_match_x(_as_dense_f32(adata.X[rows]), sampled["spliced"] + sampled["unspliced"])


def _check_genes_match_x(x: np.ndarray, counts: np.ndarray) -> None:
    """Per gene, X should rise with the gene's own spliced+unspliced counts across cells. Compare the median
    correlation of each gene with itself against that with a random other gene (what shuffled layers give);
    X may be raw, normalised, logged or scaled, since each keeps the per-gene correlation."""
    expressed = (counts > 0).sum(0) >= 5
    varied = x.std(0) > 0
    genes = np.flatnonzero(expressed & varied)
    if len(genes) < 20 or len(x) < 20:
        return  # too little to judge
    genes = genes[:: max(1, len(genes) // 500)]
    a = np.log1p(counts[:, genes] / np.maximum(counts.sum(1, keepdims=True), 1) * 1e4)
    b = x[:, genes]
    a = (a - a.mean(0)) / (a.std(0) + 1e-12)
    b = (b - b.mean(0)) / (b.std(0) + 1e-12)
    matched = np.median((a * b).mean(0))
    shuffled = np.median((a * b[:, np.random.default_rng(0).permutation(len(genes))]).mean(0))
    if matched < shuffled + 0.1:
        raise DataError(
            "layers 'spliced'/'unspliced' do not match X: genes' counts do not follow their X values "
            f"(median per-gene correlation {matched:.2f}, {shuffled:.2f} for random gene pairs); were the layers "
            "taken from another file or another gene order?"
        )


def _is_raw_counts(layer) -> bool:
    values = layer.data if sp.issparse(layer) else np.asarray(layer).ravel()
    sample = values[:100_000]
    return bool(np.all(sample >= 0) and np.allclose(sample, np.round(sample)))


def _cache_key(adata, embedding: np.ndarray, params: dict) -> str:
    h = hashlib.sha1()
    for k in ("spliced", "unspliced"):
        m = sp.csr_matrix(adata.layers[k])
        for part in (m.data, m.indices, m.indptr):
            h.update(np.ascontiguousarray(part).tobytes())
    h.update(np.ascontiguousarray(embedding, dtype=np.float32).tobytes())
    h.update(json.dumps(params, sort_keys=True).encode())
    return h.hexdigest()[:20]


def compute_velocity(adata, basis: str = "pca", embed_key: str | None = None, mode: str = "stochastic",
                     n_neighbors: int = 30, n_top_genes: int = 2000, engine: str = "fast",
                     dynamical_genes: int = DYNAMICAL_GENES, progress: Progress = None,
                     use_cache: bool = True) -> dict:
    """Run the velocity pipeline and write the keys listed in the module docstring into ``adata``.

    ``basis`` names the output keys; ``embed_key`` is the obsm key of the latent embedding to project into
    (default ``X_<basis>``). ``mode``: 'stochastic' (default) or 'dynamical' (slower). ``engine``: 'fast'
    (default) or 'scvelo' (the reference). ``progress(step_name, fraction)`` is called after each step.
    Returns a summary: seconds per step, number of cells and velocity genes, median confidence, whether the
    result came from the cache.
    """
    embed_key = embed_key or f"X_{basis}"
    if embed_key not in adata.obsm:
        raise DataError(f"no embedding obsm['{embed_key}'] to project velocity into; available: {list(adata.obsm)}")
    if mode not in MODES:
        raise DataError(f"velocity mode must be 'stochastic' or 'dynamical'; got {mode!r}")
    if engine not in ENGINES:
        raise DataError(f"velocity engine must be 'fast' or 'scvelo'; got {engine!r}")
    if n_neighbors < 2 or n_top_genes < 10:
        raise DataError("velocity needs at least 2 neighbours and 10 highly variable genes")
    check_layers(adata)
    embedding = np.asarray(adata.obsm[embed_key], dtype=np.float32)
    if embedding.ndim != 2 or not np.isfinite(embedding).all():
        raise DataError(f"obsm['{embed_key}'] must be a finite cells x dimensions array; fix it before velocity")
    params = {"mode": mode, "engine": engine, "n_neighbors": int(n_neighbors), "n_top_genes": int(n_top_genes),
              "version": _VERSION}
    if mode == "dynamical":
        params["dynamical_genes"] = int(dynamical_genes)
    report = progress or (lambda step, fraction: None)
    # the key hashes every count (about 3 s at 100,000 cells): only worth it when the cache is used
    cache_file = _cache_root() / f"{_cache_key(adata, embedding, params)}.npz" if use_cache else None
    if use_cache and cache_file.exists():
        with np.load(cache_file, allow_pickle=False) as cached:
            result = {k: cached[k] for k in cached.files}
        summary = json.loads(str(result.pop("summary")))
        summary["cached"] = True
        report("loaded from cache", 1.0)
    else:
        result, summary = _pipeline(adata, embedding, params, report)
        if use_cache:
            atomic_write_with(cache_file, lambda tmp: np.savez(tmp, summary=json.dumps(summary), **result))
    _write_keys(adata, result, params, basis, embed_key)
    return summary


def _write_keys(adata, result: dict, params: dict, basis: str, embed_key: str) -> None:
    adata.obsm[f"velocity_{basis}"] = result["v_latent"]
    adata.obsm[f"velocity_{basis}_scvelo"] = result["v_scvelo"]
    adata.obs["velocity_confidence"] = result["confidence"]
    columns = result["gene_index"]
    if len(columns) == adata.n_vars and (columns == np.arange(adata.n_vars)).all():
        velocity = np.asarray(result["velocity"], dtype=np.float32)
    else:
        velocity = np.zeros(adata.shape, dtype=np.float32)
        for start in range(0, adata.n_obs, 4096):  # in row blocks: a column scatter over all rows is ~10x slower
            velocity[start:start + 4096, columns] = result["velocity"][start:start + 4096]
    adata.layers["velocity"] = velocity
    genes = np.zeros(adata.n_vars, dtype=bool)
    genes[result["gene_index"]] = result["velocity_genes"]
    adata.var["velocity_genes"] = genes
    adata.uns["velocity_params"] = {**params, "basis": basis, "embed_key": embed_key,
                                    "latent_key": f"velocity_{basis}", "scvelo_key": f"velocity_{basis}_scvelo",
                                    "confidence_key": "velocity_confidence"}


def _preprocess(adata, params: dict, step=lambda name: None):
    """The scvelo engine's preprocessing, by scvelo's and scanpy's own functions, in a fresh AnnData: filtered
    and normalised if raw, log1p, HVG, PCA, exact kNN graph, first-order moments (Ms, Mu). The fast engine does
    the same on plain arrays (core/velocity/preprocess.py)."""
    import anndata as ad
    import scanpy as sc
    import scvelo as scv

    scv.settings.verbosity = 0
    spliced = sp.csr_matrix(adata.layers["spliced"], dtype=np.float32)
    work = ad.AnnData(X=spliced.copy())
    work.layers["spliced"] = spliced
    work.layers["unspliced"] = sp.csr_matrix(adata.layers["unspliced"], dtype=np.float32)
    work.var_names = adata.var_names.astype(str)
    work.obs_names = [str(i) for i in range(adata.n_obs)]  # user names may repeat; rows are what count
    work.var["gene_index"] = np.arange(adata.n_vars)
    if _is_raw_counts(adata.layers["spliced"]):
        scv.pp.filter_and_normalize(work, min_shared_counts=20)
        if work.n_vars < 10:
            raise DataError(f"only {work.n_vars} genes have >= 20 spliced+unspliced counts; velocity needs more "
                            "cells or deeper counts")
        sc.pp.log1p(work)
    n_top = min(params["n_top_genes"], work.n_vars)
    if n_top < work.n_vars:
        sc.pp.highly_variable_genes(work, n_top_genes=n_top, subset=True)
    step("normalise")
    n_pcs = min(30, work.n_vars - 1, work.n_obs - 1)
    sc.pp.pca(work, n_comps=n_pcs)
    n_neighbors = min(params["n_neighbors"], work.n_obs - 1)
    sc.pp.neighbors(work, n_neighbors=n_neighbors, n_pcs=n_pcs, transformer="sklearn")
    step("neighbours")
    scv.pp.moments(work, n_pcs=None, n_neighbors=None)
    step("moments")
    return work


def _pipeline(adata, embedding: np.ndarray, params: dict, report) -> tuple[dict, dict]:
    import scvelo as scv
    from scvelo.tools.transition_matrix import transition_matrix

    from core.velocity import fast

    timings, clock = {}, [time.perf_counter()]
    fractions = {"normalise": 0.1, "neighbours": 0.25, "moments": 0.35, "velocity": 0.6, "velocity graph": 0.75,
                 "projection": 0.9, "confidence": 1.0}

    def step(name):
        now = time.perf_counter()
        timings[name] = round(now - clock[0], 3)
        clock[0] = now
        report(name, fractions[name])

    work, vel, keep, knn, order = velocity_graph(adata, params, step)
    use_fast = params["engine"] == "fast"
    mode = params["mode"]

    T = transition_matrix(work, scale=10, self_transitions=True, use_negative_cosines=True)
    if use_fast:
        v_unit, v_latent = fast.transition_projection(T, embedding)
    else:
        work.obsm["X_latent"] = embedding
        scv.tl.velocity_embedding(work, basis="latent", autoscale=False)
        v_unit = np.asarray(work.obsm["velocity_latent"], dtype=np.float32)
        _, v_latent = fast.transition_projection(T, embedding)
    step("projection")

    if use_fast:
        confidence = fast.velocity_confidence(vel, knn, order, genes=keep)
    else:
        scv.tl.velocity_confidence(work)
        confidence = work.obs["velocity_confidence"].to_numpy()
    confidence = np.nan_to_num(np.asarray(confidence, dtype=np.float32), nan=0.0)
    step("confidence")

    result = {
        "v_latent": np.nan_to_num(v_latent),
        "v_scvelo": np.nan_to_num(v_unit),
        "confidence": np.clip(confidence, 0, 1),
        # in place: work is private, and a copy would be 0.8 GB more at 100,000 cells
        "velocity": _finite(np.asarray(work.layers["velocity"], dtype=np.float32)),
        "gene_index": work.var["gene_index"].to_numpy(),
        "velocity_genes": work.var["velocity_genes"].to_numpy(dtype=bool),
    }
    summary = {"timings_s": timings, "seconds": round(sum(timings.values()), 2), "n_cells": int(adata.n_obs),
               "n_velocity_genes": int(result["velocity_genes"].sum()), "engine": params["engine"],
               "mode": mode, "median_confidence": float(np.median(result["confidence"])), "cached": False}
    return result, summary


def _finite(a: np.ndarray) -> np.ndarray:
    # nan_to_num makes three passes with temporaries (1.8 s at 100,000 cells); one check suffices when all are
    return a if np.isfinite(a).all() else np.nan_to_num(a, copy=False)


def velocity_graph(adata, params: dict, step=lambda name: None):
    """The pipeline up to scvelo's velocity graph, on a private AnnData ``work`` that scvelo's own
    ``transition_matrix`` and ``velocity_embedding`` accept. Returns (work, gene velocity [n, g] float32,
    mask of the genes the graph used, kNN indices [n, k], cells grouped by cluster [n]); the last four are None
    for the scvelo engine."""
    import scvelo as scv

    from core.velocity import fast
    from core.velocity.columns import columns

    use_fast = params["engine"] == "fast"
    mode = params["mode"]
    if use_fast:
        from core.velocity.preprocess import prepare

        prepared = prepare(adata.layers["spliced"], adata.layers["unspliced"], _is_raw_counts(adata.layers["spliced"]),
                           params["n_top_genes"], params["n_neighbors"], step)
        work = prepared.as_anndata()
    else:
        work = _preprocess(adata, params, step)

    if mode == "dynamical":
        scv.tl.recover_dynamics(work, n_top_genes=params["dynamical_genes"], n_jobs=1, show_progress_bar=False)
        scv.tl.velocity(work, mode="dynamical")
    elif use_fast:
        velocity, genes, gamma = fast.stochastic_velocity(prepared.Ms, prepared.Mu, prepared.spliced,
                                                          prepared.unspliced, prepared.moments_graph,
                                                          prepared.highly_variable, order=prepared.order)
        work.layers["velocity"] = velocity
        work.var["velocity_genes"] = genes
        work.var["velocity_gamma"] = gamma
        work.uns["velocity_params"] = {"mode": "stochastic"}
        # the steps left need only Ms and the velocity: 2.6 GB fewer at the peak at 100,000 cells
        for key in ("Mu", "spliced", "unspliced"):
            del work.layers[key]
        work.X = None
        prepared = prepared.without_counts()
    else:
        scv.tl.velocity(work, mode="stochastic")
    step("velocity")

    if use_fast:
        vel = np.asarray(work.layers["velocity"], dtype=np.float32)
        keep = work.var["velocity_genes"].to_numpy(dtype=bool) & ~np.isnan(vel.sum(0))
        knn = np.sort(prepared.knn, axis=1)  # column order, as scvelo's get_indices gives them
        order = prepared.order
        x, v = fast.graph_inputs(columns(work.layers["Ms"], keep), columns(vel, keep), approx=True,
                                 sqrt_transform=mode == "stochastic")
        work.uns["velocity_graph"], work.uns["velocity_graph_neg"] = fast.velocity_graph(
            x, v, knn, sqrt_transform=mode == "stochastic")
    else:
        scv.tl.velocity_graph(work, n_jobs=1, approx=True, show_progress_bar=False)
        vel = keep = knn = order = None  # scvelo's engine keeps them inside work
    step("velocity graph")
    return work, vel, keep, knn, order


def use_precomputed(adata, velocity_key: str, embed_key: str, confidence_key: str | None = None) -> None:
    """Check velocities the user already has: obsm[velocity_key] must have the embedding's shape and be
    finite; a confidence column, if given, finite and >= 0. Raises DataError naming the problem."""
    if velocity_key not in adata.obsm:
        raise DataError(f"velocity key obsm['{velocity_key}'] not found; available: {list(adata.obsm)}")
    if embed_key not in adata.obsm:
        raise DataError(f"embedding obsm['{embed_key}'] not found; available: {list(adata.obsm)}")
    v, z = np.asarray(adata.obsm[velocity_key]), np.asarray(adata.obsm[embed_key])
    if v.shape != z.shape:
        raise DataError(
            f"obsm['{velocity_key}'] has shape {v.shape} but the embedding obsm['{embed_key}'] has {z.shape}: "
            "velocities must be projected into the same latent space"
        )
    if not np.isfinite(v.astype(np.float64)).all():
        bad = int((~np.isfinite(v.astype(np.float64))).any(1).sum())
        raise DataError(f"obsm['{velocity_key}'] has NaN or inf values in {bad} cells; recompute or drop them")
    if confidence_key is not None:
        if confidence_key not in adata.obs:
            raise DataError(f"confidence column obs['{confidence_key}'] not found; available: {list(adata.obs)}")
        c = np.asarray(adata.obs[confidence_key], dtype=np.float64)
        if not np.isfinite(c).all() or (c < 0).any():
            raise DataError(f"obs['{confidence_key}'] must be finite and >= 0 (a confidence weight per cell)")


def save_with_velocity(adata, output, source=None) -> Path:
    """Write ``adata`` (with its velocity keys) to ``output`` as .h5ad, atomically. Refuses to write over
    ``source`` (the file it was read from): the user's input file is never modified."""
    output = Path(output).expanduser()
    if source is not None and output.resolve() == Path(source).expanduser().resolve():
        raise DataError("the output path is the input file; choose another path: the input is never overwritten")
    return atomic_write_with(output, adata.write_h5ad)
