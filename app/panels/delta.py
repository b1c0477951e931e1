"""The Inspect page's Δz-vs-velocity tab: alignment of a run's predicted shifts with RNA velocity,
per cell type, next to the prediction metrics against the baselines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from app import cache
from app.cache import DEMO_DATASETS, DatasetRef
from app.components import show_figure
from core.data.datasets import run_data
from core.errors import DataError
from core.figures.run import data_kwargs, delta_velocity, per_cell_type_table, read_evaluation
from core.figures.velocity import arrows_figure, cos_histograms, norm_scatter


def run_dataset(keys: dict) -> DatasetRef:
    """The data set a run trained on, from its ``data.kwargs`` (no path: the built-in demo, with the
    velocity core computes for it when the run used ``velocity_pca``)."""
    data = run_data(keys)
    path = data.path
    if not path:
        name = f"{data.demo}:velocity" if data.with_velocity else data.demo
        return DatasetRef("demo", name, DEMO_DATASETS.get(name, name), None)
    if not Path(path).is_file():
        raise DataError(f"the run's data file {path} is gone; put it back to see Δz against velocity")
    return DatasetRef("path", str(Path(path).resolve()), f"File: {Path(path).name}", str(path))


@st.cache_resource(max_entries=8, show_spinner="Matching predictions to their control cells…")
def _delta_table(run_path: str, stamp: tuple, ref: DatasetRef, keys_items: tuple):
    predictions = cache.run_predictions(Path(run_path))
    return delta_velocity(predictions, cache.load_dataset(ref), dict(keys_items))


@st.cache_resource(max_entries=8, show_spinner="Projecting Δz and v_z onto the embedding…")
def _arrows(run_path: str, stamp: tuple, ref: DatasetRef, keys_items: tuple, basis_key: str):
    from core.figures.arrows import project_to_2d

    keys = dict(keys_items)
    table = _delta_table(run_path, stamp, ref, keys_items)
    adata = cache.load_dataset(ref)
    latent, coords = adata.obsm[keys["embed_key"]], np.asarray(adata.obsm[basis_key])[:, :2]
    neighbours = cache.latent_neighbours(ref, keys["embed_key"])
    return {name: project_to_2d(latent, field, coords, neighbours, rows=table.rows)
            for name, field in (("Δz", table.delta_z), ("v_z", table.v_z))}


def _evaluate_button(run: dict) -> None:
    if run["state"] not in ("completed", "cancelled", "interrupted"):
        st.info("Δz against velocity appears once the run has finished and been evaluated.")
        return
    done = (Path(run["path"]) / "eval" / "metrics.json").is_file()
    st.info(("Δz against velocity needs the predictions, which this evaluation did not keep (an experiment "
             "evaluates without them). " if done else "This run has not been evaluated yet. ") +
            "Evaluation predicts the held-out control cells and "
            "scores them against the real burn cells, five baselines and the real-vs-real floor (same as "
            f"`python -m core evaluate {run['name']}`).")
    if st.button("Evaluate this run", key="evaluate_run", type="primary"):
        with st.spinner("Evaluating on the held-out cells…"):
            evaluate(Path(run["path"]))
        st.rerun()


def evaluate(run_dir: Path) -> None:
    """``python -m core evaluate RUN`` in its own process: torch stays out of the app's process, and the
    app survives whatever happens there. Its one-line error (exit code 2) becomes a UserError here."""
    import subprocess
    import sys

    from core.errors import UserError
    from core.paths import REPO_ROOT

    result = subprocess.run([sys.executable, "-m", "core", "evaluate", str(run_dir)], cwd=REPO_ROOT,
                            capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        last = lines[-1].removeprefix("error: ") if lines else f"exit code {result.returncode}"
        raise UserError(f"evaluation failed: {last}")


def delta_panel(run: dict) -> None:
    path = Path(run["path"])
    summary = read_evaluation(path)
    if summary and "overall" in summary:
        from app.evaluation_panel import evaluation_panel

        st.markdown("**Prediction and alignment metrics** (model against every baseline; held-out cells)")
        evaluation_panel(summary)
        table = per_cell_type_table(path)
        if table is not None:
            st.markdown("**Per cell type**")
            shown = table.copy()
            shown.columns = [f"{metric} · {method}" for metric, method in shown.columns]
            st.dataframe(shown, key="per_cell_type_table")
    predictions_file = path / "eval" / "predictions.h5ad"
    if not predictions_file.is_file():
        _evaluate_button(run)
        return
    stamp = (predictions_file.stat().st_size, predictions_file.stat().st_mtime)

    keys = data_kwargs(run["config"])
    ref = run_dataset(keys)
    keys_items = tuple(sorted((k, v) for k, v in keys.items()
                              if isinstance(v, (str, int, float, type(None)))))
    result = _delta_table(str(path), stamp, ref, keys_items)
    if result is None:
        st.info("This run was trained without a velocity key, so there is no v_z to compare Δz with. Set a "
                "velocity key in the sidebar mapping and train with velocity alignment on.")
        return
    finite = np.isfinite(result.cos)
    c1, c2, c3 = st.columns(3)
    c1.metric("Median cos(Δz, v_z)", f"{np.median(result.cos[finite]):+.3f}" if finite.any() else "—")
    c2.metric("Cells with Δz pointing along v_z",
              f"{np.mean(result.cos[finite] > 0):.0%}" if finite.any() else "—")
    ratio = np.median(result.delta_norm[finite] / result.v_norm[finite]) if finite.any() else np.nan
    c3.metric("Median ‖Δz‖ / ‖v_z‖", f"{ratio:.2f}" if np.isfinite(ratio) else "—")

    show_figure(cos_histograms(result.cos, result.cell_types), f"{run['name']}_cos_delta_z_v_z",
                key="cos_hist")
    show_figure(norm_scatter(result.delta_norm, result.v_norm, result.cell_types),
                f"{run['name']}_norm_delta_z_vs_v_z", key="norm_scatter")

    adata = cache.load_dataset(ref)
    bases = [k for k in adata.obsm.keys() if k != keys.get("embed_key")
             and np.asarray(adata.obsm[k]).ndim == 2 and adata.obsm[k].shape[1] >= 2]
    if not bases:
        st.info("The data set has no 2-D embedding (e.g. X_umap) to draw arrows on.")
        return
    left, right = st.columns([3, 1])
    basis_key = right.selectbox("Draw on", bases, index=bases.index("X_umap") if "X_umap" in bases else 0,
                                key="delta_basis")
    mode = right.radio("Arrows", ["grid-averaged", "per cell (subsample)"], key="delta_arrow_mode")
    n_cells = right.slider("Cells (per-cell mode)", 100, 3000, 600, step=100, key="delta_cells")
    arrows = _arrows(str(path), stamp, ref, keys_items, basis_key)
    coords = np.asarray(adata.obsm[basis_key])[:, :2][result.rows]
    label = basis_key.removeprefix("X_").upper()
    with left:
        show_figure(arrows_figure(coords, arrows, mode="grid" if mode.startswith("grid") else "cells",
                                  n_cells=n_cells, basis=label),
                    f"{run['name']}_arrows_delta_z_v_z", key="delta_arrows")
