"""Check a dataset against a column mapping before anything runs, and report every problem at once.

Errors stop a run (a missing key, an absent control value, NaN in the embedding, duplicated cell names, an
embedding of the wrong size, no usable cell type, bad precomputed velocities); warnings do not (cell types
left out for lack of control or perturbed cells, or of cells for the set size; unlabelled cells; batch
nested in condition). Every message is one plain sentence that says what to change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from core.data.embedding_check import embedding_problem, embedding_warning
from core.data.mapping import ColumnMapping
from core.errors import DataError


@dataclass
class ValidationReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    usable_cell_types: list[str] = field(default_factory=list)  # with enough control and perturbed cells
    perturbations: list[str] = field(default_factory=list)  # the values of the perturbation column but control

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_if_errors(self) -> None:
        """DataError with every error, numbered, on one line."""
        if len(self.errors) == 1:
            raise DataError(self.errors[0])
        if self.errors:
            raise DataError(" ".join(f"({i}) {e}" for i, e in enumerate(self.errors, 1)))


def _columns_present(adata, mapping: ColumnMapping, report: ValidationReport) -> dict[str, bool]:
    obs, shown = adata.obs, list(adata.obs.columns)[:12]
    present = {}
    for name, what, col in (("pert", "perturbation column", mapping.pert_col),
                            ("cell_type", "cell-type column", mapping.cell_type_key),
                            ("batch", "batch column", mapping.batch_col)):
        if name == "batch" and col is None:
            present[name] = False
            continue
        if not col:
            report.errors.append(f"no {what} chosen; pick one of the obs columns {shown}")
        elif col not in obs.columns:
            report.errors.append(f"{what} '{col}' is not in obs; available: {shown}")
        present[name] = bool(col) and col in obs.columns
    if mapping.pert_col and mapping.pert_col == mapping.cell_type_key:
        report.errors.append(f"'{mapping.pert_col}' is chosen as both the perturbation and the cell-type column")
        present["pert"] = present["cell_type"] = False
    return present


def _check_embedding(adata, mapping: ColumnMapping, expected_dim: int | None, report: ValidationReport) -> None:
    if not mapping.embed_key or mapping.embed_key not in adata.obsm:
        report.errors.append(f"embedding obsm['{mapping.embed_key}'] not found; available: {list(adata.obsm)}")
        return
    problem = embedding_problem(adata.obsm[mapping.embed_key], adata.n_obs)
    if problem:
        report.errors.append(f"obsm['{mapping.embed_key}'] {problem}")
        return
    warning = embedding_warning(adata.obsm[mapping.embed_key])
    if warning:
        report.warnings.append(f"obsm['{mapping.embed_key}'] {warning}")
    z = np.asarray(adata.obsm[mapping.embed_key])
    finite = np.isfinite(z.astype(np.float64))
    if not finite.all():
        report.errors.append(f"obsm['{mapping.embed_key}'] has NaN or inf in {int((~finite).any(1).sum())} cells; "
                             "drop or fix them")
    if expected_dim is not None and z.shape[1] != expected_dim:
        report.errors.append(f"the embedding has {z.shape[1]} dimensions but the base model expects {expected_dim}; "
                             "choose the embedding the base model was trained on, or train from scratch")


# A burn/sham design has 2 conditions, a time course or dose series a handful; more usually means that a
# cell-type or cluster column was taken for the condition.
MANY_CONDITIONS = 8


def _check_condition_looks_like_one(mapping: ColumnMapping, levels: list[str], report: ValidationReport) -> None:
    """Warnings, not errors: a real design may have many arms or an unusual control name, but the user
    should look before training on cell types as "perturbations"."""
    from core.data.mapping import PERT_HINTS, control_candidates

    named_like_condition = any(hint in mapping.pert_col.lower() for hint in PERT_HINTS)
    if len(levels) > MANY_CONDITIONS and not named_like_condition:  # an atlas's 'perturbation' column may
        report.warnings.append(
            f"'{mapping.pert_col}' has {len(levels)} values: a condition column usually has a few (e.g. burn "
            "and sham); check it is not a cell-type or cluster column")
    if not control_candidates([mapping.control_pert]):
        report.warnings.append(
            f"the control value '{mapping.control_pert}' does not look like a control (sham, control, ctrl, "
            "vehicle, DMSO, ...); check that it marks the unperturbed cells")


def validate(adata, mapping: ColumnMapping, set_size: int | None = None, expected_dim: int | None = None,
             base_embedding: dict | None = None) -> ValidationReport:
    """Every problem of ``adata`` under ``mapping`` at once. ``set_size``: cells per set the model samples
    (a cell type needs that many control and perturbed cells); ``expected_dim``: the base model's latent
    dimension; ``base_embedding``: the base's embedding fingerprint (``core.data.fingerprint``), which gives
    the dimension and warns when the data's embedding cannot be in the base's space. Usable cell types are
    in ``report.usable_cell_types``."""
    report = ValidationReport()
    obs = adata.obs
    present = _columns_present(adata, mapping, report)
    if base_embedding and expected_dim is None:
        expected_dim = base_embedding.get("dim")
    errors_before = len(report.errors)
    _check_embedding(adata, mapping, expected_dim, report)
    if base_embedding and len(report.errors) == errors_before and mapping.embed_key in adata.obsm:
        from core.data.fingerprint import embedding_fingerprint, same_space_warnings

        report.warnings += same_space_warnings(base_embedding, embedding_fingerprint(adata, mapping.embed_key))
    if adata.obs_names.has_duplicates:
        dup = adata.obs_names[adata.obs_names.duplicated()][:3].tolist()
        report.errors.append(f"cell names are duplicated (e.g. {dup}); run adata.obs_names_make_unique()")
    if mapping.velocity_key and mapping.embed_key in adata.obsm:
        from core.velocity.pipeline import use_precomputed

        try:
            use_precomputed(adata, mapping.velocity_key, mapping.embed_key, mapping.confidence_key)
        except DataError as err:
            report.errors.append(str(err))
    if not (present["pert"] and present["cell_type"]):
        return report

    for what, col in (("perturbation", mapping.pert_col), ("cell type", mapping.cell_type_key)):
        missing = int(obs[col].isna().sum())
        if missing:
            report.warnings.append(f"{missing} cells have no {what} in '{col}' and are left out")
    labelled = (obs[mapping.pert_col].notna() & obs[mapping.cell_type_key].notna()).to_numpy()
    pert = obs[mapping.pert_col].astype(str).to_numpy()
    cell_type = obs[mapping.cell_type_key].astype(str).to_numpy()
    levels = sorted(set(pert[labelled]))
    report.perturbations = [p for p in levels if p != mapping.control_pert]
    if mapping.control_pert not in levels:
        report.errors.append(
            f"control value '{mapping.control_pert}' does not occur in '{mapping.pert_col}' (values: {levels[:10]}); "
            "pick the value that marks control (e.g. sham) cells"
        )
        return report
    if not report.perturbations:
        # name the real cause: perturbed cells that exist but were all left out for want of a cell type
        unlabelled = sorted({p for p in pert[obs[mapping.pert_col].notna().to_numpy() & ~labelled]}
                            - {mapping.control_pert})
        if unlabelled:
            report.errors.append(f"the perturbed cells ({', '.join(unlabelled[:5])}) all have no cell type in "
                                 f"'{mapping.cell_type_key}', so none is left to learn from; fill in their cell "
                                 "types or choose another cell-type column")
        else:
            report.errors.append(f"'{mapping.pert_col}' has only the control value '{mapping.control_pert}': "
                                 "a perturbed condition (e.g. burn) is needed to learn from")
        return report
    _check_condition_looks_like_one(mapping, levels, report)

    control = labelled & (pert == mapping.control_pert)
    perturbed = labelled & (pert != mapping.control_pert)
    for ct in sorted(set(cell_type[labelled])):
        in_ct = cell_type == ct
        n_ctrl, n_pert = int((in_ct & control).sum()), int((in_ct & perturbed).sum())
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
    if present["batch"]:
        per_batch = pd.Series(pert[labelled]).groupby(obs[mapping.batch_col].astype(str).to_numpy()[labelled]).nunique()
        if len(per_batch) > 1 and (per_batch <= 1).all():
            report.warnings.append(
                f"every '{mapping.batch_col}' value belongs to a single condition (batch nested in condition): "
                "a batch covariate could learn the condition itself; match controls by cell type only"
            )
    return report


def usable_mask(adata, mapping: ColumnMapping, report: ValidationReport) -> np.ndarray:
    """Cells of the usable cell types that have a perturbation label."""
    obs = adata.obs
    return (obs[mapping.cell_type_key].astype(str).isin(report.usable_cell_types) & obs[mapping.pert_col].notna()
            ).to_numpy()
