"""Differential expression of one group of cells against its controls, and the overlap of two DE gene lists,
computed as cell-eval 0.8.2 computes them (its DE comes from pdex 0.3 in ``mode="ref"``, with cell-eval's
settings for log-normalised data: ``is_log1p=True``, geometric means, ``epsilon=0``, no CPM filter).

Shapes: target [n, g] and reference [m, g] log1p-normalised expression (cells x genes).
    log2_fold_change  log2(expm1(mean target) / expm1(mean reference)) per gene (pdex's geometric pseudobulk);
                      0 where both means are 0
    p_value           two-sided Mann-Whitney U, normal approximation with tie and continuity corrections
    fdr               Benjamini-Hochberg over the genes
    overlap_at_k      the significant genes (fdr < 0.05) of each list, ranked by |log2 fold change|
                      (descending, ties in gene order); k_eff = min(k, number significant in the real list)
                      (k None: all of them); |top k_eff real & top k_eff predicted| / k_eff
Where the two differ from cell-eval, on purpose: a group whose real list has no significant gene has no overlap
(NaN; cell-eval reports 0.0, which reads as a wrong prediction), and a gene whose fold change is not finite
because a decoded mean is negative is not ranked (observed log1p data never has one).
tests/fixtures/genes/ holds a value cell-eval computed itself (make_reference.py) that these must reproduce.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FDR_THRESHOLD = 0.05


@dataclass
class DEResult:
    """Per gene [g]: log2 fold change, Mann-Whitney p-value, Benjamini-Hochberg FDR."""

    log2_fold_change: np.ndarray
    p_value: np.ndarray
    fdr: np.ndarray

    def significant(self, fdr_threshold: float = FDR_THRESHOLD) -> np.ndarray:
        return (self.fdr < fdr_threshold) & ~np.isnan(self.log2_fold_change)


def log2_fold_change(target, reference) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.expm1(np.asarray(target, dtype=np.float64).mean(0))
        r = np.expm1(np.asarray(reference, dtype=np.float64).mean(0))
        lfc = np.log2(t / r)
    lfc[(t == 0) & (r == 0)] = 0.0
    return lfc


def differential_expression(target, reference) -> DEResult:
    from scipy.stats import false_discovery_control, mannwhitneyu

    target, reference = np.asarray(target, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = mannwhitneyu(target, reference, axis=0, method="asymptotic", use_continuity=True).pvalue
    p = np.nan_to_num(np.asarray(p, dtype=np.float64), nan=1.0).clip(0, 1)  # constant genes: nothing to test
    return DEResult(log2_fold_change(target, reference), p, false_discovery_control(p) if p.size else p)


def ranked_de_genes(de: DEResult, fdr_threshold: float = FDR_THRESHOLD) -> np.ndarray:
    """Indices of the significant genes by |log2 fold change|, largest first (ties in gene order)."""
    genes = np.flatnonzero(de.significant(fdr_threshold))
    order = np.argsort(-np.abs(de.log2_fold_change[genes]), kind="stable")
    return genes[order]


def de_overlap(real: DEResult, pred: DEResult, k: int | None, fdr_threshold: float = FDR_THRESHOLD) -> float:
    """cell-eval's ``overlap_at_k`` for one group (module docstring); NaN when the real list has no gene."""
    real_genes, pred_genes = ranked_de_genes(real, fdr_threshold), ranked_de_genes(pred, fdr_threshold)
    k_eff = real_genes.size if not k else min(k, real_genes.size)
    if k_eff == 0:
        return math.nan
    return np.intersect1d(real_genes[:k_eff], pred_genes[:k_eff]).size / k_eff


def top_genes(de: DEResult, genes, n: int, direction: str, fdr_threshold: float = FDR_THRESHOLD) -> list[str]:
    """The ``n`` significant genes with the largest (``up``) or most negative (``down``) log2 fold change."""
    lfc = de.log2_fold_change
    keep = np.flatnonzero(de.significant(fdr_threshold) & ((lfc > 0) if direction == "up" else (lfc < 0)))
    order = np.argsort(-lfc[keep] if direction == "up" else lfc[keep], kind="stable")
    return [str(genes[i]) for i in keep[order][:n]]
