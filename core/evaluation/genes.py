"""Which genes the perturbation changes in which cell type: predicted against observed, in gene space.

Per (perturbation, cell type) group of the held-out split, with the decoder of ``core.evaluation.gene_decoders``
(genes g) and ``core.evaluation.gene_de`` (cell-eval's DE and top-k overlap):
    observed      the real perturbed cells' expression against the group's held-out control cells (the ones
                  predicted from), both as the data holds them (X or obsm['X_hvg'])
    model         decode(z_pred) against decode(z_control): both sides through the same decoder, so what the
                  decoder cannot represent does not count as a predicted change
    decoded_real  decode(z_real) against decode(z_control): the observed latent shift through the decoder, the
                  most any latent prediction can score through it (a ceiling, not a predictor)
    train_cells   the training split's perturbed cells of the type against its training controls, as observed:
                  a prediction that needs no model (absent for a held-out cell type)
For each source beside ``observed``: the Pearson correlation of log2 fold changes over the genes where both are
finite, cell-eval's overlap of the top-k DE genes (k = ``top_k`` and k = N, all of the real list), and the top
up and down genes. ``overall`` is the mean over the groups where a value is defined (a group without observed DE
genes has no overlap). The per-gene table (one row per group and gene) is what the figures and eval/gene_lfc.csv
show.
"""

from __future__ import annotations

import math

import numpy as np

from core.evaluation.gene_de import FDR_THRESHOLD, de_overlap, differential_expression, top_genes
from core.evaluation.gene_decoders import GeneDecoder, observed_expression

SOURCES = ("observed", "model", "decoded_real", "train_cells")
DEFAULT_GENE_TOP_K = 50
TOP_GENES_SHOWN = 10
MIN_CELLS = 3  # a rank test on fewer cells a side says nothing
DESCRIPTIONS = {
    "observed": "real perturbed cells vs their held-out controls, as measured",
    "model": "the model's predictions vs the controls they start from, both decoded",
    "decoded_real": "real perturbed vs control cells, both decoded from the latent (the decoder's ceiling)",
    "train_cells": "training perturbed vs training control cells of the type, as measured (no model)",
}


def _pearson(a, b) -> float:
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 3 or np.std(a[keep]) == 0 or np.std(b[keep]) == 0:
        return math.nan
    return float(np.corrcoef(a[keep], b[keep])[0, 1])


def gene_evaluation(decoder: GeneDecoder, adata, embedding, groups, top_k: int = DEFAULT_GENE_TOP_K):
    """(summary dict, per-gene DataFrame) for ``groups``: a list of dicts with ``perturbation``, ``cell_type``,
    ``z_pred`` [n, D], ``control_rows``, ``real_rows`` and ``train_rows`` / ``train_control_rows`` (row indices
    of ``adata``; train ones may be empty)."""
    import pandas as pd

    genes = decoder.genes
    per_group, tables, skipped = {}, [], {}
    for group in groups:
        label = group["label"]
        control_rows, real_rows = np.asarray(group["control_rows"]), np.asarray(group["real_rows"])
        if min(len(control_rows), len(real_rows), len(group["z_pred"])) < MIN_CELLS:
            skipped[label] = f"fewer than {MIN_CELLS} control, real or predicted cells"
            continue
        de = {
            "observed": differential_expression(observed_expression(decoder, adata, real_rows),
                                                observed_expression(decoder, adata, control_rows)),
            "model": differential_expression(decoder.decode(group["z_pred"]),
                                             decoder.decode(embedding[control_rows])),
            "decoded_real": differential_expression(decoder.decode(embedding[real_rows]),
                                                    decoder.decode(embedding[control_rows])),
        }
        train, train_control = np.asarray(group["train_rows"]), np.asarray(group["train_control_rows"])
        if min(len(train), len(train_control)) >= MIN_CELLS:
            de["train_cells"] = differential_expression(observed_expression(decoder, adata, train),
                                                        observed_expression(decoder, adata, train_control))
        observed = de["observed"]
        scores = {}
        for source, result in de.items():
            entry = {"n_significant": int(result.significant().sum()),
                     "top_up": top_genes(result, genes, TOP_GENES_SHOWN, "up"),
                     "top_down": top_genes(result, genes, TOP_GENES_SHOWN, "down")}
            if source != "observed":
                entry.update({"pearson_lfc": _pearson(result.log2_fold_change, observed.log2_fold_change),
                              "overlap_at_k": de_overlap(observed, result, top_k),
                              "overlap_at_n": de_overlap(observed, result, None)})
            scores[source] = entry
        per_group[label] = {"perturbation": group["perturbation"], "cell_type": group["cell_type"],
                            "n_real": int(len(real_rows)), "n_control": int(len(control_rows)), **scores}
        table = pd.DataFrame({"perturbation": group["perturbation"], "cell_type": group["cell_type"], "gene": genes})
        for source in SOURCES:
            table[f"{source}_log2fc"] = de[source].log2_fold_change if source in de else np.nan
            table[f"{source}_fdr"] = de[source].fdr if source in de else np.nan
        tables.append(table)
    overall = {}
    for source in SOURCES[1:]:
        overall[source] = {}
        for metric in ("pearson_lfc", "overlap_at_k", "overlap_at_n"):
            values = [g[source][metric] for g in per_group.values() if source in g]
            finite = [v for v in values if math.isfinite(v)]
            # a mean over fewer groups than the model's would not compare with it
            complete = len(values) == len(per_group)
            overall[source][metric] = float(np.mean(finite)) if finite and complete else math.nan
    summary = {"decoder": {"kind": decoder.kind, "description": decoder.description, "n_genes": int(len(genes))},
               "top_k": int(top_k), "fdr_threshold": FDR_THRESHOLD, "sources": dict(DESCRIPTIONS),
               "definition": "log2 fold change = log2(expm1(mean x_perturbed) / expm1(mean x_control)); DE: "
                             "Mann-Whitney U, Benjamini-Hochberg FDR < 0.05; overlap as cell-eval's overlap_at_k",
               "overall": overall, "per_cell_type": per_group, "skipped": skipped}
    frame = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=["perturbation", "cell_type",
                                                                                      "gene"])
    return summary, frame


def no_decoder_summary(reason: str) -> dict:
    """What metrics.json says when no decoder exists: the reason, and no numbers."""
    return {"decoder": None, "reason": reason}
