"""Computing RNA velocity from the Data page: one ``core.velocity.compute_velocity`` call (the same the
CLI makes), with its progress shown step by step. The data set in the cache is never modified: the
computation runs on a copy, and only the latent velocity and confidence are kept."""

from __future__ import annotations

import numpy as np
import streamlit as st

from app import cache
from core.errors import DataError

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
        from core.velocity import compute_velocity

        bar = st.progress(0.0, text="Starting the velocity pipeline…")

        def progress(step, fraction):
            bar.progress(float(min(max(fraction, 0.0), 1.0)), text=f"{step}…")

        work = adata.to_memory() if adata.isbacked else adata.copy()
        compute_velocity(work, basis=basis, embed_key=embed_key, progress=progress, **params)
        bar.progress(1.0, text="Done.")
        cache.store_computed_velocity(ref, params_key, {
            "velocity": np.asarray(work.obsm[f"velocity_{basis}"]),
            "confidence": np.asarray(work.obs["velocity_confidence"]),
        })
    result = cache.computed_velocity(ref, params_key)
    if result is None:
        st.info(f"Velocity ({mode}) has not been computed with these settings yet: press 'Compute velocity'.")
        return None, None
    st.caption(f"Latent velocity (obsm['velocity_{basis}'], in the units of {embed_key}) and a confidence "
               "per cell. To train with it, save a copy of the data set that holds it:")
    if st.button("Save a copy with this velocity and train on it", key="velocity_save_copy"):
        path = save_copy_with_velocity(ref, adata, embed_key, params)
        # The sidebar applies this before drawing its widgets on the next run (see sidebar.render).
        st.session_state["pending_server_path"] = str(path)
        st.rerun()
    return params_key, result["confidence"]


def save_copy_with_velocity(ref, adata, embed_key: str, params: dict):
    """What ``python -m core velocity --adata IN --output OUT`` does: the data set plus its velocity keys,
    written as a new file next to the uploads (the user's file is never touched). The computation itself
    comes from core.velocity's on-disk cache."""
    import hashlib

    from app.sidebar import uploads_dir
    from core.velocity import compute_velocity

    tag = hashlib.sha1(f"{ref.kind}|{ref.key}|{embed_key}|{sorted(params.items())}".encode()).hexdigest()[:16]
    path = uploads_dir() / f"{tag}-velocity-{params['mode']}.h5ad"
    if not path.is_file():
        work = adata.to_memory() if adata.isbacked else adata.copy()
        compute_velocity(work, basis=embed_key.removeprefix("X_"), embed_key=embed_key, **params)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp.h5ad")
        with st.spinner("Writing the copy…"):
            work.write_h5ad(tmp)
        tmp.replace(path)
        from core.uploads import evict

        evict(keep=path)  # copies count against ST_UPLOADS_MAX_BYTES like uploads
    return path
