"""Every figure and table of one run, from its folder: what the app's Export page and
``python -m core figures RUN`` both produce.

Δz against velocity needs the evaluation's ``eval/predictions.h5ad`` (obsm ``X_pred``, ``delta_z``; obs
``matched_control`` = the control cell each prediction starts from) and the data set the run trained on
(its ``data.kwargs``: the embedding, velocity, confidence, cell-type keys, and a 2-D basis to draw on).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import DataError


@dataclass
class DeltaVelocity:
    """Per predicted control cell (rows of the predictions): everything the Δz-vs-velocity figures need.

    rows [M] index into the data set; delta_z, v_z [M, D]; cos, delta_norm, v_norm, confidence [M];
    cell_types [M] (strings)."""

    rows: np.ndarray
    delta_z: np.ndarray
    v_z: np.ndarray
    cos: np.ndarray
    delta_norm: np.ndarray
    v_norm: np.ndarray
    confidence: np.ndarray | None
    cell_types: np.ndarray


def data_kwargs(config: dict) -> dict:
    """The run's ``data.kwargs`` from its nested or flattened config."""
    if "data" in config and isinstance(config["data"], dict):
        return dict(config["data"].get("kwargs") or {})
    prefix = "data.kwargs."
    return {k[len(prefix):]: v for k, v in config.items() if k.startswith(prefix)}


def per_cell_alignment(delta_z: np.ndarray, v_z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cos(Δz, v_z), ‖Δz‖ and ‖v_z‖ per cell; cos is NaN where either vector is zero (no direction)."""
    delta_norm = np.linalg.norm(delta_z, axis=1)
    v_norm = np.linalg.norm(v_z, axis=1)
    denominator = delta_norm * v_norm
    cos = np.full(len(delta_z), np.nan)
    np.divide(np.einsum("nd,nd->n", delta_z, v_z), denominator, out=cos, where=denominator > 0)
    return cos, delta_norm, v_norm


def delta_velocity(predictions, adata, keys: dict) -> DeltaVelocity | None:
    """Δz of each prediction next to the velocity of its control cell; None without a velocity key."""
    velocity_key = keys.get("velocity_key")
    if not velocity_key:
        return None
    if velocity_key not in adata.obsm:
        raise DataError(f"the data set has no obsm['{velocity_key}'] (the run's velocity key); compute "
                        "velocity on the Data page or choose the data set the run was trained on")
    if "matched_control" not in predictions.obs:
        raise DataError("the predictions have no obs['matched_control']; evaluate the run again")
    rows = adata.obs_names.get_indexer(predictions.obs["matched_control"].astype(str))
    if (rows < 0).any():
        raise DataError("the predictions name control cells that are not in this data set; choose the data "
                        "set the run was trained on")
    embedding = np.asarray(adata.obsm[keys["embed_key"]], dtype=np.float64)
    if "delta_z" in predictions.obsm:
        delta = np.asarray(predictions.obsm["delta_z"], dtype=np.float64)
    else:
        delta = np.asarray(predictions.obsm["X_pred"], dtype=np.float64) - embedding[rows]
    v_z = np.asarray(adata.obsm[velocity_key], dtype=np.float64)[rows]
    cos, delta_norm, v_norm = per_cell_alignment(delta, v_z)
    confidence_key = keys.get("confidence_key")
    confidence = (pd.to_numeric(adata.obs[confidence_key], errors="coerce").to_numpy()[rows]
                  if confidence_key and confidence_key in adata.obs else None)
    cell_types = adata.obs[keys["cell_type_key"]].astype(str).to_numpy()[rows]
    return DeltaVelocity(rows, delta, v_z, cos, delta_norm, v_norm, confidence, cell_types)


# ------------------------------------------------------------------------------------------------ tables


def read_evaluation(run_dir: Path) -> dict | None:
    path = Path(run_dir) / "eval" / "metrics.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


SUMMARY_METRICS = ("energy_distance", "pearson_delta", "mae_mean", "top_k_overlap", "cos_delta_v",
                   "magnitude_ratio")


def evaluation_table(run_dirs: dict[str, Path]) -> pd.DataFrame:
    """One row per evaluated run: the model's overall metrics (mean over cell types), its final
    checkpoint's energy distance, and for scale the no-change baseline's, the best baseline's (named) and
    the real-vs-real floor's energy distance."""
    rows = {}
    for name, run_dir in run_dirs.items():
        evaluation = read_evaluation(run_dir)
        if not evaluation or "overall" not in evaluation:
            continue
        model = evaluation["overall"].get("model", {})
        row = {f"eval {m}": model.get(m) for m in SUMMARY_METRICS if m in model}
        final = evaluation.get("final") or {}
        if not final.get("same_as_best", True):
            row["eval energy_distance (final ckpt)"] = final.get("overall", {}).get("model", {}).get("energy_distance")
        baseline = evaluation["overall"].get("no_change", {})
        if "energy_distance" in baseline:
            row["eval energy_distance (no change)"] = baseline["energy_distance"]
        row.update(_best_baseline_columns(evaluation))
        rows[name] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "run"
    return table


def _best_baseline_columns(evaluation: dict) -> dict:
    from core.evaluation.baselines import FLOOR, PREDICTORS

    overall = evaluation["overall"]
    values = {m: overall[m].get("energy_distance") for m in PREDICTORS if m in overall}
    finite = {m: v for m, v in values.items() if isinstance(v, (int, float))}
    out = {}
    if finite:
        best = min(finite, key=finite.get)
        out = {"eval energy_distance (best baseline)": finite[best], "best baseline": best}
    floor = overall.get(FLOOR, {}).get("energy_distance")
    if floor is not None:
        out["eval energy_distance (real/real floor)"] = floor
    return out


def per_cell_type_table(run_dir: Path) -> pd.DataFrame | None:
    """eval/per_cell_type.csv as cell type x (metric, method): the model next to every baseline and the
    real-vs-real floor."""
    path = Path(run_dir) / "eval" / "per_cell_type.csv"
    if not path.is_file():
        return None
    table = pd.read_csv(path)
    metrics = [m for m in SUMMARY_METRICS if m in table and table[m].notna().any()]
    wide = table.pivot_table(index="cell_type", columns="method", values=metrics, aggfunc="first")
    from core.evaluation.baselines import FLOOR, PREDICTORS

    methods = [m for m in ("model", *PREDICTORS, FLOOR) if m in wide.columns.get_level_values(1)]
    return wide.reindex(columns=pd.MultiIndex.from_product([metrics, methods]))


# ------------------------------------------------------------------------------------------------ figures


def run_figures(run_dir: Path, adata=None, basis_key: str = "X_umap", log_y: bool = False,
                smoothing: float = 0.9, snapshot_index: int = -1) -> dict:
    """Training curves, mHC mappings, the gene-space figures of an evaluation and (with ``adata`` and the
    evaluation's predictions) Δz-vs-velocity figures."""
    from core.figures.mhc import mhc_figures
    from core.figures.training import training_figures
    from core.runs import list_mhc_snapshots, load_mhc_snapshot, read_config, read_metrics

    run_dir = Path(run_dir)
    velocity = read_config(run_dir).get("model", {}).get("kwargs", {}).get("use_velocity_alignment")
    figures = dict(training_figures(read_metrics(run_dir), log_y=log_y, smoothing=smoothing, velocity=velocity))
    snapshots = [load_mhc_snapshot(p) for _, p in list_mhc_snapshots(run_dir)]
    if snapshots:
        figures.update(mhc_figures(snapshots, snapshot_index))
    evaluation = read_evaluation(run_dir)
    if evaluation and "genes" in evaluation:
        from core.figures.genes import gene_figures, read_gene_table

        figures.update(gene_figures(evaluation, read_gene_table(run_dir)))
    predictions_path = run_dir / "eval" / "predictions.h5ad"
    if adata is not None and predictions_path.is_file():
        import anndata

        figures.update(delta_velocity_figures(anndata.read_h5ad(predictions_path), adata,
                                              data_kwargs(read_config(run_dir)), basis_key))
    return figures


def delta_velocity_figures(predictions, adata, keys: dict, basis_key: str = "X_umap",
                           arrows: dict | None = None) -> dict:
    """Histogram of cos(Δz, v_z) per cell type, ‖Δz‖ vs ‖v_z‖, and Δz and v_z arrows on ``basis_key``.

    ``arrows`` may pass already projected {"Δz": [M, 2], "v_z": [M, 2]} (the app caches them)."""
    from core.figures.arrows import latent_neighbours, project_to_2d
    from core.figures.velocity import arrows_figure, cos_histograms, norm_scatter

    table = delta_velocity(predictions, adata, keys)
    if table is None:
        return {}
    figures = {
        "cos_delta_z_v_z_per_cell_type": cos_histograms(table.cos, table.cell_types),
        "norm_delta_z_vs_v_z": norm_scatter(table.delta_norm, table.v_norm, table.cell_types),
    }
    if basis_key in adata.obsm:
        coords = np.asarray(adata.obsm[basis_key])[:, :2]
        if arrows is None:
            latent = np.asarray(adata.obsm[keys["embed_key"]])
            neighbours = latent_neighbours(latent)
            arrows = {name: project_to_2d(latent, field, coords, neighbours, rows=table.rows)
                      for name, field in (("Δz", table.delta_z), ("v_z", table.v_z))}
        label = basis_key.removeprefix("X_").upper()
        figures["arrows_delta_z_v_z"] = arrows_figure(coords[table.rows], arrows, basis=label)
    return figures
