"""The Inspect page's Genes tab: which genes the perturbation changes in each cell type, predicted beside
observed, from the run's evaluation (``python -m core evaluate``: metrics.json "genes", eval/gene_lfc.csv)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from app.components import show_figure
from app.plain import plain
from core.figures.genes import SOURCE_LABELS, lfc_scatter, overlap_bars, read_gene_table, top_genes_table
from core.figures.run import read_evaluation

METRIC_LABELS = {"overlap_at_k": "top-k DE overlap", "overlap_at_n": "overlap at N (all observed DE genes)",
                 "pearson_lfc": "Pearson r of log2FC"}


def _scores_table(entry_or_overall: dict, k: int) -> pd.DataFrame:
    rows = {}
    for source, label in SOURCE_LABELS.items():
        scores = entry_or_overall.get(source)
        if scores:
            rows[label] = {METRIC_LABELS[m].replace("top-k", f"top-{k}"): scores.get(m) for m in METRIC_LABELS}
    return pd.DataFrame.from_dict(rows, orient="index")


def genes_panel(run: dict) -> None:
    path = Path(run["path"])
    summary = read_evaluation(path)
    if not summary or "overall" not in summary:
        st.info("Genes appear once the run has been evaluated (the Δz vs velocity tab has the button, or run "
                f"`python -m core evaluate {run['name']}`).")
        return
    genes = summary.get("genes")
    if genes is None:
        st.info("This evaluation was made before gene-space results existed: evaluate the run again.")
        return
    if not genes["decoder"]:
        st.info("No gene-space results for this run: " + plain(genes["reason"]))
        return
    st.caption(f"Log2 fold changes (as cell-eval computes them) {plain(genes['decoder']['description'])}. DE: "
               f"Mann-Whitney U, Benjamini-Hochberg FDR < {genes['fdr_threshold']}; held-out cells.")
    st.markdown("**Mean over cell types**: the model beside the training cells' own DE (no model) and the real "
                "cells decoded (the most a prediction in this latent can reach through the decoder)")
    st.dataframe(_scores_table(genes["overall"], genes["top_k"]), key="genes_overall")
    show_figure(overlap_bars(summary), f"{run['name']}_de_gene_overlap", key="genes_overlap")
    groups = list(genes["per_cell_type"])
    if not groups:
        st.info("No cell type had enough held-out cells for a DE test: " + plain("; ".join(genes["skipped"].values())))
        return
    group = st.selectbox("Cell type", groups, key="genes_group")
    entry = genes["per_cell_type"][group]
    st.caption(f"{entry['n_real']} real perturbed cells, {entry['n_control']} control cells predicted from")
    table = read_gene_table(path)
    if table is None:
        st.info("The evaluation's gene table (eval/gene_lfc.csv) is missing: evaluate the run again.")
    else:
        show_figure(lfc_scatter(table, entry["cell_type"], perturbation=entry["perturbation"]),
                    f"{run['name']}_log2fc_{entry['cell_type']}", key="genes_scatter")
    st.markdown("**Scores of this cell type**")
    st.dataframe(_scores_table(entry, genes["top_k"]), key="genes_scores")
    st.markdown("**Top genes up and down** (FDR < 0.05, by log2 fold change)")
    st.dataframe(top_genes_table(summary, group), key="genes_top")
