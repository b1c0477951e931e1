"""Writing an evaluation into a run folder: eval/metrics.json, per_cell_type.csv, gene_lfc.csv, predictions.h5ad.

Every file is written atomically (``core.runs``), so the app never reads half an evaluation. In
metrics.json an undefined value (NaN, e.g. the Pearson delta of the no-change baseline) is ``null``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from core.io.atomic import atomic_write_json, atomic_write_text, atomic_write_with, ensure_dir

GENE_TABLE = "gene_lfc.csv"


def json_ready(value):
    """``value`` with NaN/inf floats as None and numpy scalars/arrays as Python values."""
    if isinstance(value, dict):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return json_ready(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def write_h5ad_atomic(adata, path: Path) -> None:
    """``adata.write_h5ad``, atomically (core.io.atomic)."""
    atomic_write_with(path, adata.write_h5ad)


def write_evaluation(out_dir, summary: dict, per_group, predictions=None, gene_table=None) -> dict[str, Path]:
    """Write metrics.json (``summary``), per_cell_type.csv (``per_group``), gene_lfc.csv (``gene_table``, the
    per-gene log2 fold changes of core.evaluation.genes) and, when given, the predictions AnnData into
    ``out_dir``; returns the paths written. A gene_lfc.csv of an earlier evaluation is removed when this one has
    none (no decoder), so the files never disagree."""
    out_dir = Path(out_dir)
    ensure_dir(out_dir)
    paths = {"metrics": out_dir / "metrics.json", "per_cell_type": out_dir / "per_cell_type.csv"}
    atomic_write_text(paths["per_cell_type"], per_group.to_csv(index=False))
    genes_file = out_dir / GENE_TABLE
    if gene_table is not None:
        paths["gene_lfc"] = genes_file
        atomic_write_text(genes_file, gene_table.to_csv(index=False))
    elif genes_file.exists():
        genes_file.unlink()
    if predictions is not None:
        paths["predictions"] = out_dir / "predictions.h5ad"
        write_h5ad_atomic(predictions, paths["predictions"])
    # metrics.json last: its presence says the evaluation is complete.
    atomic_write_json(paths["metrics"], json_ready(summary))
    return paths
