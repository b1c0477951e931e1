"""RNA velocity: the whole stochastic pipeline and the latent projection, at 5k and 20k cells of the demo generator.

Rows:
- the pipeline with our fast engine (``core.velocity.compute_velocity(engine="fast")``, no cache) against the
  same pipeline with scvelo's own functions (``engine="scvelo"``), both from the counts to v_z and confidence;
  target: 20k cells <= 60 s. Medians of 5 runs (3 with --quick), the engines alternating; the step times of the
  median run are in ``extra``.
- the projection step alone: scvelo's transition matrix and our latent projection against scvelo's own
  ``velocity_embedding`` (which builds the same transition matrix inside) on the same velocity graph;
  target <= 1.0x.
"""

from __future__ import annotations

import time

import numpy as np

from bench.harness import Row, Timing, measure


def _pipelines(adata, repeats: int, warmup: int) -> dict[str, tuple[Timing, dict]]:
    """Both engines, alternately, ``repeats`` times after ``warmup`` untimed rounds; per engine the timing and
    the step times of its median run."""
    from core.velocity.pipeline import compute_velocity

    runs: dict[str, list[tuple[float, dict]]] = {"fast": [], "scvelo": []}
    for i in range(warmup + repeats):
        for engine, out in runs.items():
            start = time.perf_counter()
            summary = compute_velocity(adata.copy(), engine=engine, use_cache=False)
            if i >= warmup:
                out.append((time.perf_counter() - start, summary["timings_s"]))
    result = {}
    for engine, out in runs.items():
        median_run = sorted(out, key=lambda r: r[0])[len(out) // 2]
        result[engine] = (Timing.of([t for t, _ in out]),
                          {f"{engine}_{k}_s": v for k, v in median_run[1].items()})
    return result


def run(quick: bool) -> list[Row]:
    import scvelo as scv
    from scvelo.tools.transition_matrix import transition_matrix

    from core.data.demo import generate
    from core.velocity.fast import transition_projection
    from core.velocity.pipeline import velocity_graph

    rows = []
    repeats = 3 if quick else 5
    for n_cells in (5_000,) if quick else (5_000, 20_000):
        adata, _ = generate(umap=False, cells_per_group=n_cells // 12)
        label = f"{adata.n_obs} cells x {adata.n_vars} genes"
        # the first size's warm-up round pays numba's compilation, which a user pays once per environment
        timed = _pipelines(adata, repeats, warmup=1 if n_cells == 5_000 else 0)
        (ours, ours_steps), (theirs, their_steps) = timed["fast"], timed["scvelo"]
        rows.append(Row("velocity", f"pipeline (stochastic) to v_z + confidence, {label}", ours,
                        "same pipeline with scvelo's functions", theirs, target="<= 60 s at 20k",
                        met=(ours.median_s <= 60) if n_cells >= 20_000 else None,
                        extra={**ours_steps, **their_steps}))

        params = {"mode": "stochastic", "engine": "fast", "n_neighbors": 30, "n_top_genes": 2000}
        work, *_ = velocity_graph(adata, params)
        z = np.asarray(adata.obsm["X_pca"], dtype=np.float32)
        work.obsm["X_latent"] = z
        scv.settings.verbosity = 0

        def mine(w=work, z=z):
            transition_projection(transition_matrix(w, scale=10, self_transitions=True, use_negative_cosines=True), z)

        t_mine = measure(mine, repeats=repeats)
        t_theirs = measure(lambda w=work: scv.tl.velocity_embedding(w, basis="latent", autoscale=False),
                           repeats=repeats)
        rows.append(Row("velocity", f"latent projection incl. transition matrix, {adata.n_obs} cells, d={z.shape[1]}",
                        t_mine, "scvelo velocity_embedding", t_theirs, target="<= 1.0x",
                        met=t_mine.median_s <= t_theirs.median_s))
    return rows


if __name__ == "__main__":
    for row in run(quick=True):
        print(row)
