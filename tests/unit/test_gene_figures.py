"""The gene-space figures draw the evaluation's numbers: each gene at (observed, predicted) log2 fold change in
the class its FDRs give it, ±inf at the edge of the finite range, and the overlap bars per cell type."""

import numpy as np
import pandas as pd

from core.figures.genes import gene_figures, lfc_scatter, overlap_bars, top_genes_table


def table():
    return pd.DataFrame({
        "perturbation": "burn", "cell_type": "Basal", "gene": ["a", "b", "c", "d", "e"],
        "observed_log2fc": [2.0, -1.0, 0.1, np.inf, 0.0], "observed_fdr": [0.001, 0.01, 0.5, 0.01, 0.9],
        "model_log2fc": [1.5, 0.2, 1.0, 3.0, -0.1], "model_fdr": [0.001, 0.4, 0.01, 0.02, 0.8],
    })


def test_scatter_puts_each_gene_in_the_class_its_fdrs_give_and_infinite_values_at_the_edge():
    fig = lfc_scatter(table(), "Basal")
    points = {trace.name.split(" (")[0]: dict(zip(trace.text, zip(trace.x, trace.y))) for trace in fig.data
              if trace.mode == "markers"}
    assert points["DE in both"] == {"a": (2.0, 1.5), "d": (2.0 * 1.1, 3.0)}  # inf drawn at 1.1 x the largest finite
    assert points["DE observed only"] == {"b": (-1.0, 0.2)}
    assert points["DE predicted only"] == {"c": (0.1, 1.0)}
    assert points["neither"] == {"e": (0.0, -0.1)}
    assert "1 infinite values drawn at the edge" in fig.layout.title.text


def test_overlap_bars_and_top_genes_come_from_the_summary():
    summary = {"genes": {"top_k": 5, "per_cell_type": {
        "Basal": {"perturbation": "burn", "cell_type": "Basal",
                  "observed": {"top_up": ["a", "d"], "top_down": ["b"]},
                  "model": {"top_up": ["d"], "top_down": [], "overlap_at_k": 0.5},
                  "train_cells": {"top_up": ["a"], "top_down": ["b"], "overlap_at_k": 1.0}}}}}
    bars = {trace.name: list(trace.y) for trace in overlap_bars(summary).data}
    assert bars["model"] == [0.5] and bars["training cells (no model)"] == [1.0]
    assert np.isnan(bars["real cells through the decoder (ceiling)"][0])
    top = top_genes_table(summary, "Basal")
    assert list(top["observed · up"]) == ["a", "d"] and list(top["model · up"]) == ["d", ""]
    assert set(gene_figures(summary, table())) == {"de_gene_overlap_per_cell_type",
                                                   "log2fc_predicted_vs_observed_Basal"}
    no_decoder = overlap_bars({"genes": {"decoder": None, "reason": "no decoder to genes: obsm['X_state']"}})
    assert no_decoder.layout.annotations[0].text == "no decoder to genes: obsm['X_state']" and not no_decoder.data
