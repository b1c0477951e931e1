"""Genes a perturbation changes: predicted against observed log2 fold changes of one cell type, and the
top-k DE overlap per cell type, from an evaluation's eval/gene_lfc.csv and metrics.json "genes" entry
(core/evaluation/genes.py says how each number is made).

Input: the per-gene table (columns perturbation, cell_type, gene, <source>_log2fc, <source>_fdr for the sources
observed, model, decoded_real, train_cells) and the summary dict.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from core.figures.style import GREY, OKABE_ITO, apply_style, message_figure

FDR = 0.05
SOURCE_LABELS = {"model": "model", "decoded_real": "real cells through the decoder (ceiling)",
                 "train_cells": "training cells (no model)"}
# which list calls a gene DE: the colour says whether the prediction agrees with the data
CLASS_COLOURS = {"DE in both": OKABE_ITO[2], "DE observed only": OKABE_ITO[3], "DE predicted only": OKABE_ITO[0],
                 "neither": GREY}


def read_gene_table(run_dir) -> pd.DataFrame | None:
    path = Path(run_dir) / "eval" / "gene_lfc.csv"
    return pd.read_csv(path) if path.is_file() else None


def _finite_clip(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Values with ±inf (a gene absent on one side, as cell-eval leaves it) drawn at the edge of the finite
    range, and how many were moved."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    edge = float(np.abs(finite).max()) * 1.1 if finite.size else 1.0
    infinite = np.isinf(values)
    return np.where(infinite, np.sign(values) * edge, values), int(infinite.sum())


def lfc_scatter(table: pd.DataFrame, cell_type: str, source: str = "model", perturbation: str | None = None,
                label_top: int = 8) -> go.Figure:
    """Predicted (``source``) against observed log2 fold change of every gene of ``cell_type``, coloured by
    where it is DE (FDR < 0.05), the identity line, and the ``label_top`` genes observed to change most named."""
    rows = table[table["cell_type"].astype(str) == str(cell_type)]
    if perturbation is not None:
        rows = rows[rows["perturbation"].astype(str) == str(perturbation)]
    column = f"{source}_log2fc"
    if rows.empty or column not in rows or rows[column].isna().all():
        return message_figure(f"No {SOURCE_LABELS.get(source, source)} fold changes for {cell_type}.")
    observed, moved_x = _finite_clip(rows["observed_log2fc"].to_numpy())
    predicted, moved_y = _finite_clip(rows[column].to_numpy())
    de_obs = rows["observed_fdr"].to_numpy() < FDR
    de_pred = rows[f"{source}_fdr"].to_numpy() < FDR
    classes = np.select([de_obs & de_pred, de_obs, de_pred], list(CLASS_COLOURS)[:3], "neither")
    genes = rows["gene"].astype(str).to_numpy()
    fig = go.Figure()
    for name, colour in CLASS_COLOURS.items():
        pick = classes == name
        if pick.any():
            fig.add_trace(go.Scatter(x=observed[pick], y=predicted[pick], mode="markers", name=f"{name} ({pick.sum()})",
                                     marker=dict(color=colour, size=6, opacity=0.8), text=genes[pick],
                                     hovertemplate="%{text}<br>observed %{x:.2f}<br>predicted %{y:.2f}<extra></extra>"))
    finite = np.isfinite(observed) & np.isfinite(predicted)
    if finite.any():
        low, high = float(min(observed[finite].min(), predicted[finite].min())), float(
            max(observed[finite].max(), predicted[finite].max()))
        fig.add_trace(go.Scatter(x=[low, high], y=[low, high], mode="lines", name="predicted = observed",
                                 line=dict(color="#444444", dash="dot", width=1), hoverinfo="skip"))
    strongest = np.argsort(-np.nan_to_num(np.abs(observed), nan=-1.0))[:label_top]
    for i in strongest:
        if np.isfinite(observed[i]) and np.isfinite(predicted[i]):
            fig.add_annotation(x=observed[i], y=predicted[i], text=genes[i], showarrow=False, yshift=10,
                               font=dict(size=11))
    fig.update_xaxes(title_text="observed log2 fold change", zeroline=True)
    fig.update_yaxes(title_text=f"{SOURCE_LABELS.get(source, source)}: log2 fold change", zeroline=True)
    title = f"{cell_type}: predicted vs observed log2 fold change"
    if moved_x or moved_y:
        title += f" ({moved_x + moved_y} infinite values drawn at the edge)"
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.18, x=0, xanchor="left"))
    return apply_style(fig, title=title, height=520)


def overlap_bars(summary: dict, metric: str = "overlap_at_k") -> go.Figure:
    """Per cell type, the top-k DE overlap (or another per-source metric) of the model beside the training
    cells' own DE and the decoder's ceiling."""
    genes = summary.get("genes") or {}
    groups = genes.get("per_cell_type") or {}
    if not groups:
        return message_figure(genes.get("reason") or "This evaluation has no gene-space results.")
    labels = list(groups)
    fig = go.Figure()
    for colour, source in zip(OKABE_ITO, ("model", "train_cells", "decoded_real")):
        values = [groups[g].get(source, {}).get(metric) for g in labels]
        fig.add_trace(go.Bar(x=labels, y=[np.nan if v is None else v for v in values], name=SOURCE_LABELS[source],
                             marker_color=colour))
    k = genes.get("top_k")
    what = {"overlap_at_k": f"top-{k} DE gene overlap", "overlap_at_n": "DE gene overlap (all observed DE genes)",
            "pearson_lfc": "Pearson r of log2 fold changes"}.get(metric, metric)
    fig.update_yaxes(title_text=what, range=[0, 1] if metric != "pearson_lfc" else [-1, 1])
    fig.update_layout(barmode="group", legend=dict(orientation="h", yanchor="top", y=-0.18, x=0, xanchor="left"))
    return apply_style(fig, title=f"{what} per cell type (held-out cells)", height=450)


def top_genes_table(summary: dict, group: str) -> pd.DataFrame:
    """The top up and down genes of one group, observed and per source, side by side (rank = row)."""
    entry = (summary.get("genes") or {}).get("per_cell_type", {}).get(group) or {}
    columns = {}
    for source in ("observed", "model", "train_cells", "decoded_real"):
        if source in entry:
            for direction in ("top_up", "top_down"):
                columns[f"{source} · {direction.removeprefix('top_')}"] = entry[source][direction]
    length = max((len(v) for v in columns.values()), default=0)
    frame = pd.DataFrame({k: v + [""] * (length - len(v)) for k, v in columns.items()})
    frame.index = np.arange(1, length + 1)
    return frame


def gene_figures(summary: dict, table: pd.DataFrame | None) -> dict:
    """Every gene-space figure of an evaluation: the overlap bars, then one scatter per cell type."""
    figures = {"de_gene_overlap_per_cell_type": overlap_bars(summary)}
    if table is not None:
        for group, entry in (summary.get("genes") or {}).get("per_cell_type", {}).items():
            safe = str(group).replace(" / ", "_").replace(" ", "_")
            figures[f"log2fc_predicted_vs_observed_{safe}"] = lfc_scatter(
                table, entry["cell_type"], perturbation=entry["perturbation"])
    return figures
