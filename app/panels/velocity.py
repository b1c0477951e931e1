"""Computing RNA velocity from the Data page: one ``core.velocity.compute_velocity`` call (the same the
CLI makes), with its progress shown step by step. The data set in the cache is never modified: the
computation runs on a copy, and only the latent velocity and confidence are kept."""

from __future__ import annotations

import numpy as np
import streamlit as st

from app import cache, state
from core.errors import DataError
from core.io.atomic import atomic_write_with

MODES = {"stochastic (fast, scvelo's default)": "stochastic", "dynamical (slow; full kinetics)": "dynamical"}


def velocity_panel(ref, adata, embed_key: str | None):
    """Form + result. Returns (params_key, confidence) once velocity exists for these settings, else
    (None, None)."""
    if not embed_key:
        raise DataError("choose the embedding in the sidebar's column mapping first")
    if not {"spliced", "unspliced"} <= set(adata.layers.keys()):
        raise DataError("this data set has no 'spliced' and 'unspliced' layers, so velocity cannot be "
                        "computed; choose a precomputed velocity key instead")
    basis = embed_key.removeprefix("X_")
    with st.form("velocity_form"):
        c1, c2, c3 = st.columns(3)
        mode_label = c1.selectbox("Mode", list(MODES), key="velocity_mode")
        n_neighbors = c2.number_input("Neighbours (kNN graph)", 5, 200, 30, key="velocity_neighbours")
        n_top_genes = c3.number_input("Highly variable genes", 100, 20_000, 2000, step=100, key="velocity_genes")
        submitted = st.form_submit_button("Compute velocity")
    mode = MODES[mode_label]
    params = dict(mode=mode, n_neighbors=int(n_neighbors), n_top_genes=int(n_top_genes))
    params_key = f"{embed_key}|{mode}|{int(n_neighbors)}|{int(n_top_genes)}"
    if submitted:
        timings = _compute_with_progress(ref, adata, basis, embed_key, params, params_key)
        st.caption("Where the time went: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings))
    result = cache.computed_velocity(ref, params_key)
    if result is None:
        st.info(f"Velocity ({mode}) has not been computed with these settings yet: press 'Compute velocity'.")
        return None, None
    st.caption(f"Latent velocity (obsm['velocity_{basis}'], in the units of {embed_key}) and a confidence "
               "per cell. To train with it, save a copy of the data set that holds it:")
    if st.button("Save a copy with this velocity and train on it", key="velocity_save_copy"):
        path = save_copy_with_velocity(ref, adata, embed_key, params)
        # The sidebar applies this before drawing its widgets on the next run (see sidebar.render).
        state.PENDING_SERVER_PATH.set(str(path))
        st.rerun()
    return params_key, result["confidence"]


# What core.velocity does after each step it reports, so the bar says what is running now, not only what
# has finished (the first step used to sit on "Starting…" for 17 s).
NEXT_STEP = {"normalise": "building the kNN graph", "neighbours": "computing moments",
             "moments": "fitting gene velocities", "velocity": "building the velocity graph",
             "velocity graph": "projecting into the latent space", "projection": "scoring confidence",
             "confidence": "done", "loaded from cache": "done"}


def _compute_with_progress(ref, adata, basis, embed_key, params, params_key) -> list[tuple[str, float]]:
    """``core.velocity.compute_velocity`` on a copy, with a bar that names the running step (the imports
    and the copy included: in a fresh server they are a good part of the first run). Returns (step,
    seconds) in order."""
    import sys
    import time

    timings: list[tuple[str, float]] = []
    clock = [time.perf_counter()]

    def lap(name):
        now = time.perf_counter()
        timings.append((name, now - clock[0]))
        clock[0] = now

    bar = st.progress(0.0, text="Loading scanpy and scvelo…")
    if "scvelo" not in sys.modules:
        bar.progress(0.0, text="Loading scanpy and scvelo (the first time in this server takes about 10 s)…")
    import scvelo  # noqa: F401  (timed here, so the first step below does not carry it)

    from core.velocity.pipeline import compute_velocity

    lap("loading scanpy and scvelo")
    bar.progress(0.02, text=f"Reading {adata.n_obs:,} cells × {adata.n_vars:,} genes into memory…")
    work = adata.to_memory() if adata.isbacked else adata.copy()
    lap("copying the data set")
    bar.progress(0.04, text="Filtering and normalising the counts, selecting genes…")

    def progress(step, fraction):
        lap(step)
        bar.progress(float(min(max(fraction, 0.0), 1.0)),
                     text=f"{step} done ({timings[-1][1]:.1f} s); now {NEXT_STEP.get(step, 'working')}…")

    compute_velocity(work, basis=basis, embed_key=embed_key, progress=progress, **params)
    total = sum(seconds for _, seconds in timings)
    bar.progress(1.0, text=f"Done in {total:.1f} s.")
    cache.store_computed_velocity(ref, params_key, {
        "velocity": np.asarray(work.obsm[f"velocity_{basis}"]),
        "confidence": np.asarray(work.obs["velocity_confidence"]),
    })
    return timings


def save_copy_with_velocity(ref, adata, embed_key: str, params: dict):
    """What ``python -m core velocity --adata IN --output OUT`` does: the data set plus its velocity keys,
    written as a new file next to the uploads (the user's file is never touched). The computation itself
    comes from core.velocity's on-disk cache."""
    import hashlib

    from app.sidebar import uploads_dir
    from core.velocity.pipeline import compute_velocity

    tag = hashlib.sha1(f"{ref.kind}|{ref.key}|{embed_key}|{sorted(params.items())}".encode()).hexdigest()[:16]
    path = uploads_dir() / f"{tag}-velocity-{params['mode']}.h5ad"
    if not path.is_file():
        work = adata.to_memory() if adata.isbacked else adata.copy()
        compute_velocity(work, basis=embed_key.removeprefix("X_"), embed_key=embed_key, **params)
        with st.spinner("Writing the copy…"):  # atomic, with a temp name per process: sessions never collide
            atomic_write_with(path, work.write_h5ad)
        from core.runs.uploads import evict

        evict(keep=path)  # copies count against ST_UPLOADS_MAX_BYTES like uploads
    return path
