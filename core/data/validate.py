"""Check a dataset against a column mapping before anything runs, and report every problem at once.

Errors stop a run (missing keys, absent control value, NaN in the embedding, ...); warnings do not (cell types
left out, batch nested in condition, ...). Messages are plain sentences that say what to change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from core.data.mapping import ColumnMapping
from core.errors import DataError


@dataclass
class ValidationReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    usable_cell_types: list[str] = field(default_factory=list)
    perturbations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_if_errors(self) -> None:
        if self.errors:
            raise DataError(" ".join(f"({i}) {e}" for i, e in enumerate(self.errors, 1)) if len(self.errors) > 1
                            else self.errors[0])


def _finite(matrix) -> bool:
    return bool(np.isfinite(np.asarray(matrix, dtype=np.float64)).all())


def validate(adata, mapping: ColumnMapping, set_size: int | None = None, expected_dim: int | None = None,
             ) -> ValidationReport:
    report = ValidationReport()
    obs = adata.obs
    for what, col in (("perturbation column", mapping.pert_col), ("cell-type column", mapping.cell_type_key),
                      ("batch column", mapping.batch_col)):
        if col is None and what == "batch column":
            continue
        if not col:
            report.errors.append(f"no {what} chosen; pick one of the obs columns {list(obs.columns)[:12]}")
        elif col not in obs.columns:
            report.errors.append(f"{what} '{col}' is not in obs; available: {list(obs.columns)[:12]}")
    if not mapping.embed_key or mapping.embed_key not in adata.obsm:
        report.errors.append(f"embedding obsm['{mapping.embed_key}'] not found; available: {list(adata.obsm)}")
    if adata.obs_names.has_duplicates:
        dup = adata.obs_names[adata.obs_names.duplicated()][:3].tolist()
        report.errors.append(f"cell names are duplicated (e.g. {dup}); run adata.obs_names_make_unique()")
    if report.errors:
        return report

    pert = obs[mapping.pert_col].astype(str)
    levels = sorted(pert.unique())
    report.perturbations = [p for p in levels if p != mapping.control_pert]
    if mapping.control_pert not in levels:
        report.errors.append(
            f"control value '{mapping.control_pert}' does not occur in '{mapping.pert_col}' (values: {levels[:10]}); "
            "pick the value that marks control (e.g. sham) cells"
        )
    elif not report.perturbations:
        report.errors.append(f"'{mapping.pert_col}' has only the control value '{mapping.control_pert}': "
                             "a perturbed condition (e.g. burn) is needed to learn from")

    z = np.asarray(adata.obsm[mapping.embed_key])
    if z.ndim != 2 or z.shape[0] != adata.n_obs:
        report.errors.append(f"obsm['{mapping.embed_key}'] must be cells x dimensions; got shape {z.shape}")
    elif not _finite(z):
        bad = int((~np.isfinite(z.astype(np.float64))).any(1).sum())
        report.errors.append(f"obsm['{mapping.embed_key}'] has NaN or inf in {bad} cells; drop or fix them")
    elif expected_dim is not None and z.shape[1] != expected_dim:
        report.errors.append(f"the embedding has {z.shape[1]} dimensions but the base model expects {expected_dim}; "
                             "choose the embedding the base model was trained on, or train from scratch")

    if mapping.velocity_key:
        from core.velocity import use_precomputed

        try:
            use_precomputed(adata, mapping.velocity_key, mapping.embed_key, mapping.confidence_key)
        except DataError as err:
            report.errors.append(str(err))

    if report.errors:
        return report
    cell_type = obs[mapping.cell_type_key].astype(str)
    control = pert == mapping.control_pert
    for ct in sorted(cell_type.unique()):
        in_ct = cell_type == ct
        n_ctrl, n_pert = int((in_ct & control).sum()), int((in_ct & ~control).sum())
        if n_ctrl == 0 or n_pert == 0:
            side = "control" if n_ctrl == 0 else "perturbed"
            report.warnings.append(f"cell type '{ct}' has no {side} cells and is left out")
        elif set_size is not None and min(n_ctrl, n_pert) < set_size:
            report.warnings.append(f"cell type '{ct}' has {min(n_ctrl, n_pert)} cells on one side, fewer than the "
                                   f"set size {set_size}; it is left out (lower the set size to keep it)")
        else:
            report.usable_cell_types.append(ct)
    if not report.usable_cell_types:
        report.errors.append("no cell type has enough control and perturbed cells"
                             + (f" for set size {set_size}; lower the set size" if set_size else ""))
    if mapping.batch_col:
        nested = obs.groupby(obs[mapping.batch_col].astype(str), observed=True)[mapping.pert_col].nunique()
        if (nested <= 1).all():
            report.warnings.append(
                f"every '{mapping.batch_col}' value belongs to a single condition (batch nested in condition): "
                "a batch covariate could learn the condition itself; match controls by cell type only"
            )
    return report


def usable_mask(adata, mapping: ColumnMapping, report: ValidationReport) -> pd.Series:
    """Cells of the usable cell types."""
    return adata.obs[mapping.cell_type_key].astype(str).isin(report.usable_cell_types)
