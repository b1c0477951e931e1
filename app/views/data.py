"""Data page: is the data set usable, what is in it, and where is it heading (RNA velocity)."""

import numpy as np
import streamlit as st

from app import cache, state
from app.components import current_data, show_figure
from app.guard import shown_errors
from app.plain import plain
from app.readiness import readiness
from app.sidebar import describe_fields
from core.figures.velocity import confidence_histogram, embedding_scatter

NO_GENE = "(none: the column)"
MAX_STREAM_PANELS = 4  # side by side, each still readable

st.title("Data")
ref, adata, mapping = current_data()
st.text(f"{ref.label}: {adata.n_obs:,} cells × {adata.n_vars:,} genes.")  # a user's file name: text, no markdown
if mapping is None:
    missing = state.MAPPING_MISSING.get()
    st.warning(f"Choose the {describe_fields(missing) if missing else 'column mapping'} in the sidebar's column "
               "mapping to validate and summarise this data set.")
    st.stop()
mapping_fields = tuple(sorted(mapping.items()))

# ---------------------------------------------------------------------------------------------- validation
st.subheader("Validation")
with shown_errors("validating the data set"):
    ready = readiness()
    if ready.against:
        st.caption(f"Checked against the Train page's settings: {ready.against}.")
    report = ready.report
    if report is None:
        for blocker in ready.blockers:
            st.error(blocker)
    elif ready.ready and not report.warnings:
        st.success("Ready to train: every check passed.")
    elif ready.ready:
        st.success("Ready to train, with the warnings below.")
    elif report.ok:  # only guesses stand in the way
        st.info(f"Every check passed, but {plain(ready.blockers[-1])}.")
    if report is not None:
        for problem in report.errors:
            st.error(plain(problem))
        for warning in report.warnings:
            st.warning(plain(warning))
    if ready.arc:
        st.markdown("**Against the Arc State folder** chosen as the base on the Train page")
        for level, text in ready.arc:
            {"ok": st.success, "note": st.info, "error": st.error}[level](plain(text))

st.subheader("Cells per condition × cell type × batch")
with shown_errors("summarising the data set"):
    st.dataframe(cache.summary(ref, mapping_fields), key="summary_table", height=250)

# ---------------------------------------------------------------------------------------- embedding, velocity
st.subheader("Embedding and RNA velocity")
two_d = [k for k in adata.obsm.keys()
         if getattr(adata.obsm[k], "ndim", 0) == 2 and adata.obsm[k].shape[1] >= 2]
if not two_d:
    st.info("This data set has no 2-D embedding in obsm (e.g. X_umap); compute one with scanpy first.")
    st.stop()
preferred = [k for k in ("X_umap", "X_tsne", "X_draw_graph_fa") if k in two_d]
obs_columns = [str(c) for c in adata.obs.columns]
default_colour = mapping.get("cell_type_key")
default_colour = default_colour if default_colour in obs_columns else obs_columns[0]
c1, c2, c3 = st.columns([1, 1, 2])
basis_key = c1.selectbox("Embedding to draw (first two columns)", two_d,
                         index=two_d.index(preferred[0]) if preferred else 0, key="data_basis")
colour = c2.selectbox("Colour by", obs_columns, index=obs_columns.index(default_colour), key="data_colour")
gene = c2.selectbox("…or by a gene's expression (X)", [NO_GENE, *map(str, adata.var_names)], key="data_gene")
velocity_source = c3.radio(
    "Velocity", ["Precomputed (the obsm key chosen in the sidebar)", "Compute from spliced/unspliced counts"],
    key="velocity_source")
basis_label = basis_key.removeprefix("X_").upper()
coords = adata.obsm[basis_key][:, :2]
embed_key = mapping.get("embed_key")

colour_values, colour_name = adata.obs[colour].reset_index(drop=True), colour
if gene != NO_GENE:
    with shown_errors("reading the gene's expression"):
        colour_values, colour_name = cache.gene_expression(ref, gene), f"{gene} (X)"

left, right = st.columns(2)
with left, shown_errors("drawing the embedding"):
    show_figure(embedding_scatter(coords, colour_values, colour_name, basis=basis_label),
                f"{basis_label.lower()}_by_{colour_name}")

arrows = None
with right:
    vectors_key, source_kind, confidence = None, "obsm", None
    if velocity_source.startswith("Precomputed"):
        vectors_key = mapping.get("velocity_key")
        if vectors_key is None:
            st.info("No velocity key is chosen in the sidebar's column mapping: pick one there, choose the "
                    "demo with scvelo velocity, or compute velocity here.")
        if mapping.get("confidence_key"):
            confidence = adata.obs[mapping["confidence_key"]].to_numpy()
    else:
        from app.panels.velocity import velocity_panel

        with shown_errors("computing RNA velocity"):
            vectors_key, confidence = velocity_panel(ref, adata, embed_key)
            source_kind = "computed"
    if vectors_key is not None and embed_key:
        with shown_errors("drawing velocity arrows"):
            rows, arrows = cache.projected_arrows(ref, embed_key, vectors_key, basis_key, source_kind)
            if len(rows) < adata.n_obs:
                st.caption(f"Arrows and streamlines from {len(rows):,} of {adata.n_obs:,} cells (a fixed random "
                           "sample), so that they are drawn in seconds.")
            arrow_coords = coords[rows]
            arrow_colours = (colour_values.iloc[rows].reset_index(drop=True) if hasattr(colour_values, "iloc")
                             else np.asarray(colour_values)[rows])
            mode = state.VELOCITY_ARROW_MODE.get()
            grid = state.VELOCITY_GRID.get()
            per_grid = mode.startswith("grid")
            how = f"grid-averaged, {grid}×{grid}" if per_grid else "per cell, subsample"
            fig = cache.velocity_arrows_figure(
                arrow_coords, {"velocity": arrows}, mode="grid" if per_grid else "cells", grid_size=grid,
                basis=basis_label, title=f"Velocity on the {basis_label} ({how})", colour_values=arrow_colours,
                colour_name=colour_name, categories=colour_values)
            show_figure(fig, f"velocity_arrows_{basis_label.lower()}")
            a1, a2 = st.columns(2)
            a1.radio("Arrows", ["grid-averaged", "per cell (subsample)"], key=state.VELOCITY_ARROW_MODE.name,
                     horizontal=True)
            a2.slider("Grid size", 10, 50, state.VELOCITY_GRID.default(), key=state.VELOCITY_GRID.name)
    if confidence is not None:
        show_figure(confidence_histogram(confidence, state.MIN_CONFIDENCE.get()),
                    "velocity_confidence")

if arrows is not None:
    st.subheader("Velocity streamlines per condition")
    st.caption("scvelo's stream view: lines follow each condition's grid-averaged velocity on the "
               f"{basis_label} (grid {state.VELOCITY_GRID.get()}×{state.VELOCITY_GRID.get()}, one grid for "
               "every panel); cells coloured as above. Line spacing and length are for reading, not magnitudes.")
    with shown_errors("drawing the velocity streamlines"):
        conditions = adata.obs[mapping["pert_col"]].astype(str).iloc[rows].reset_index(drop=True)
        control = str(mapping["control_pert"])
        order = [control, *sorted(set(conditions) - {control})][:MAX_STREAM_PANELS]
        if len(set(conditions)) > MAX_STREAM_PANELS:
            st.caption(f"Showing {MAX_STREAM_PANELS} of {len(set(conditions))} conditions: the control and the "
                       "first others by name.")
        show_figure(cache.velocity_stream_figure(arrow_coords, arrows, conditions, arrow_colours, colour_name,
                                                 order=order, grid_size=state.VELOCITY_GRID.get(),
                                                 basis=basis_label),
                    f"velocity_stream_{basis_label.lower()}")
