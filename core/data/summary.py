"""Cells per condition x cell type x batch: the first table anyone looks at."""

from __future__ import annotations

import pandas as pd

from core.data.mapping import ColumnMapping


def summary_table(adata, mapping: ColumnMapping) -> pd.DataFrame:
    """Rows: cell types (and batches when a batch column is mapped); columns: perturbation values; plus a total."""
    obs = adata.obs
    index = [obs[mapping.cell_type_key].astype(str).rename("cell type")]
    if mapping.batch_col:
        index.append(obs[mapping.batch_col].astype(str).rename("batch"))
    table = pd.crosstab(index, obs[mapping.pert_col].astype(str).rename("condition"))
    table = table[table.sum(axis=1) > 0]
    table["total"] = table.sum(axis=1)
    return table
