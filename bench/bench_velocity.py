"""Velocity pipeline (scvelo, stochastic) and the latent projection, at 5k and 20k cells of the demo generator.

Baseline for the projection step: scvelo's own ``velocity_embedding`` on the same transition matrix.
Target: the whole pipeline at 20k cells <= 60 s; our projection <= 1.0x scvelo's.
"""

from __future__ import annotations

import time

from bench.harness import Row, Timing, measure


def run(quick: bool) -> list[Row]:
    import scvelo as scv

    from core.data.demo import N_GENES, generate
    from core.velocity import _run_scvelo, centred_projection

    rows = []
    sizes = (5_000,) if quick else (5_000, 20_000)
    for n_cells in sizes:
        adata, _ = generate(umap=False, cells_per_group=n_cells // 12)
        params = {"mode": "stochastic", "n_neighbors": 30, "n_top_genes": 2000, "version": 1}
        embedding = adata.obsm["X_pca"]
        start = time.perf_counter()
        _, summary = _run_scvelo(adata, embedding, params, lambda *a: None, time)
        total = time.perf_counter() - start
        rows.append(Row("velocity", f"scvelo pipeline + projection, {adata.n_obs} cells x {N_GENES} genes",
                        Timing(total, total, total, 1), target="<= 60 s at 20k",
                        met=(total <= 60) if n_cells >= 20_000 else None,
                        extra={f"{k}_s": v for k, v in summary["timings_s"].items()}))
        # the projection step alone, ours vs scvelo's velocity_embedding, on the same graph
        import anndata as ad
        import scanpy as sc
        import scipy.sparse as sp

        work = ad.AnnData(X=sp.csr_matrix(adata.layers["spliced"], dtype="float32"))
        work.layers["spliced"] = work.X.copy()
        work.layers["unspliced"] = sp.csr_matrix(adata.layers["unspliced"], dtype="float32")
        work.obsm["X_latent"] = embedding
        scv.settings.verbosity = 0
        scv.pp.filter_and_normalize(work, min_shared_counts=20)
        sc.pp.log1p(work)
        sc.pp.pca(work, n_comps=30)
        sc.pp.neighbors(work, n_neighbors=30, transformer="sklearn")
        scv.pp.moments(work, n_pcs=None, n_neighbors=None)
        scv.tl.velocity(work, mode="stochastic")
        scv.tl.velocity_graph(work, n_jobs=1, approx=True, show_progress_bar=False)
        repeats = 3 if quick else 5
        theirs = measure(lambda w=work: scv.tl.velocity_embedding(w, basis="latent", autoscale=False), repeats=repeats)

        def ours(w=work, z=embedding):
            transition = scv.utils.get_transition_matrix(w)
            centred_projection(transition, w.obsp["distances"], z)

        mine = measure(ours, repeats=repeats)
        ratio = mine.median_s / theirs.median_s
        rows.append(Row("velocity", f"latent projection (centred T Z - A Z), {adata.n_obs} cells", mine,
                        "scvelo velocity_embedding", theirs, target="<= 1.0x", met=ratio <= 1.0))
    return rows
