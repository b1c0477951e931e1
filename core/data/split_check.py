"""Which cell types can train once the cells are split (issue 12, point 10).

``validate`` counts a cell type's control and perturbed cells before the split; training only sees the
training split, about 70% of them. A cell type with exactly set-size cells passes validation and then draws
every set with replacement from a dozen cells. Here the counts are taken in the training split itself.
"""

from __future__ import annotations

import numpy as np

from core.data.mapping import ColumnMapping
from core.errors import DataError


def train_split_cell_types(obs, mapping: ColumnMapping, split: np.ndarray, cell_types: list[str],
                           set_size: int) -> tuple[list[str], list[str]]:
    """(cell types with at least ``set_size`` control and perturbed cells in the training split, warnings for
    the others); DataError when none is left."""
    labelled = (obs[mapping.pert_col].notna() & obs[mapping.cell_type_key].notna()).to_numpy()
    pert = obs[mapping.pert_col].astype(str).to_numpy()
    cell_type = obs[mapping.cell_type_key].astype(str).to_numpy()
    train = labelled & (np.asarray(split) == "train")
    is_control = pert == mapping.control_pert
    keep, warnings = [], []
    for ct in cell_types:
        in_ct = train & (cell_type == ct)
        n_ctrl, n_pert = int((in_ct & is_control).sum()), int((in_ct & ~is_control).sum())
        if min(n_ctrl, n_pert) < set_size:
            warnings.append(f"cell type '{ct}' has {min(n_ctrl, n_pert)} cells on one side of the training split, "
                            f"fewer than the set size {set_size}; it is left out (lower the set size, or "
                            "data.kwargs.val_fraction / test_fraction, to keep it)")
        else:
            keep.append(ct)
    if cell_types and not keep:
        raise DataError(f"after the train/val/test split no cell type has {set_size} control and {set_size} "
                        "perturbed training cells; lower the set size (model.kwargs.cell_set_len) or "
                        "data.kwargs.val_fraction / test_fraction")
    return keep, warnings
