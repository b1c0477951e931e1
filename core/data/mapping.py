"""Which columns of a user's AnnData mean what: the perturbation, its control value, cell type, batch and the
embedding, with guesses for the usual names so that most files need no typing."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import pandas as pd

CONTROL_WORDS = ("sham", "control", "ctrl", "ctl", "vehicle", "dmso", "untreated", "non-targeting", "mock", "wt")
PERT_HINTS = ("condition", "perturbation", "treatment", "pert", "group", "sample_type")
_CELL_TYPE_HINTS = ("cell_types_simple_short", "cell_type", "celltype", "cell_types", "annotation", "cluster")
_BATCH_HINTS = ("mouse_id", "mouse", "batch", "donor", "sample", "plate", "replicate")
_EMBED_HINTS = ("X_state", "X_state_baseline", "X_pca", "X_scvi", "X_emb")


@dataclass
class ColumnMapping:
    """What each part of a user's AnnData means.

    pert_col        obs column of the condition or perturbation (demo: 'condition')
    control_pert    its control value (demo: 'sham'; atlas: 'control')
    cell_type_key   obs column of cell types (demo: 'cell_types_simple_short')
    batch_col       obs column of batches, e.g. mice or plates, or None (demo: 'mouse_id')
    embed_key       obsm key of the latent embedding the model works in (demo: 'X_pca')
    velocity_key    obsm key of a latent velocity of the embedding's shape, or None (demo: 'velocity_pca')
    confidence_key  obs column of a per-cell velocity confidence >= 0, or None ('velocity_confidence')
    """

    pert_col: str
    control_pert: str
    cell_type_key: str
    batch_col: str | None
    embed_key: str
    velocity_key: str | None = None
    confidence_key: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def categorical_columns(adata, max_levels: int = 200) -> list[str]:
    """obs columns with few enough distinct values to be a label (perturbation, cell type, batch)."""
    out = []
    for name, col in adata.obs.items():
        if isinstance(col.dtype, pd.CategoricalDtype) or col.dtype == object or pd.api.types.is_bool_dtype(col):
            if col.nunique(dropna=True) <= max_levels:
                out.append(name)
    return out


def _rank(candidates: list[str], hints: tuple[str, ...]) -> list[str]:
    def score(name: str) -> int:
        lowered = name.lower()
        for i, hint in enumerate(hints):
            if lowered == hint.lower():
                return i
        for i, hint in enumerate(hints):
            if hint.lower() in lowered:
                return len(hints) + i
        return 10 * len(hints)

    return sorted(candidates, key=score)


def control_candidates(values) -> list[str]:
    """Values that look like a control, best first: those starting with a control word (sham, control,
    ctrl, DMSO, vehicle, ...) not followed by a letter, so 'Control', 'sham_d3' and 'DMSO_0.1%' count but
    'controlled' does not."""
    names = [str(v) for v in pd.unique(pd.Series(values).dropna())]

    def rank(value: str) -> int | None:
        lowered = value.lower()
        return next((i for i, w in enumerate(CONTROL_WORDS) if re.match(rf"{re.escape(w)}(?![a-z])", lowered)), None)

    ranked = [(rank(v), v) for v in names]
    return [v for r, v in sorted((r, v) for r, v in ranked if r is not None)]


def candidates(adata) -> dict[str, list[str]]:
    """Ranked options for each mapping field, for the UI's select boxes."""
    cats = categorical_columns(adata)
    # columns holding a control-like value first, then those named like a condition, then the rest
    ranked = _rank(cats, PERT_HINTS)
    with_control = [c for c in ranked if control_candidates(adata.obs[c])]
    pert = with_control + [c for c in ranked if c not in with_control]
    matrices = [k for k in adata.obsm.keys() if getattr(adata.obsm[k], "ndim", 0) == 2]
    embeds = _rank([k for k in matrices if "velocity" not in k], _EMBED_HINTS)
    two_d = ("X_umap", "X_tsne", "X_draw_graph_fa")
    velocities = [k for k in matrices if "velocity" in k]
    return {
        "pert_col": pert,
        "cell_type_key": _rank(cats, _CELL_TYPE_HINTS),
        "batch_col": _rank(cats, _BATCH_HINTS),
        # 2-D layouts last: they are pictures, not a latent space to learn in
        "embed_key": [e for e in embeds if e not in two_d] + [e for e in embeds if e in two_d],
        # the demo's ground truth ("true_...") last: offered for experiments, never guessed
        "velocity_key": [k for k in velocities if not k.startswith("true_")] + [k for k in velocities
                                                                             if k.startswith("true_")],
        "confidence_key": [c for c in adata.obs.columns if "confidence" in c.lower()],
    }


def _named_like(name: str, hints: tuple[str, ...]) -> bool:
    return any(hint.lower() in name.lower() for hint in hints)


def guess_mapping(adata) -> ColumnMapping:
    """A best guess; every field can be overridden. Raises nothing: the validator reports what is missing.

    A field is guessed only on evidence: the condition column holds a control-like value or is named like a
    condition, the cell-type column is named like one. Otherwise it stays "" (no guess), so a file without a
    condition column is not silently trained with its cell types as "perturbations"."""
    opts = candidates(adata)
    pert_col = _guess_pert_col(adata, opts["pert_col"])
    controls = control_candidates(adata.obs[pert_col]) if pert_col else []
    cell_type = next((c for c in opts["cell_type_key"] if c != pert_col and _named_like(c, _CELL_TYPE_HINTS)), "")
    batch = next((c for c in opts["batch_col"] if c not in (pert_col, cell_type) and
                  any(h in c.lower() for h in _BATCH_HINTS)), None)
    embed = opts["embed_key"][0] if opts["embed_key"] else ""
    velocity = _guess_velocity(adata, embed, opts["velocity_key"])
    return ColumnMapping(
        pert_col=pert_col,
        control_pert=controls[0] if controls else "",
        cell_type_key=cell_type,
        batch_col=batch,
        embed_key=embed,
        velocity_key=velocity,
        confidence_key=opts["confidence_key"][0] if opts["confidence_key"] and velocity else None,
    )


def _guess_pert_col(adata, ranked: list[str]) -> str:
    """A column named like a condition (integer columns too: 0/1 conditions are common), else one holding a
    control-like value (sham, control, ...) that is not named like a batch or cell type, else none: the
    validator then asks the user. A mouse id such as 'sham_1' taken as the condition trains one fake
    perturbation per mouse (issue 12, point 7)."""
    named = [c for c in adata.obs.columns if any(h in str(c).lower() for h in PERT_HINTS)
             and adata.obs[c].nunique(dropna=True) <= 200]
    if named:
        return _rank(named, PERT_HINTS)[0]
    other_roles = _BATCH_HINTS + _CELL_TYPE_HINTS
    with_control = [c for c in ranked if control_candidates(adata.obs[c])
                    and not any(h in str(c).lower() for h in other_roles)]
    return with_control[0] if with_control else ""


def _guess_velocity(adata, embed: str, options: list[str]) -> str | None:
    """A latent velocity of the embedding's shape: velocity_<basis> (core.velocity's key) first, never the
    unit-less ``*_scvelo`` projection or the demo's truth."""
    if not embed:
        return None
    shape = adata.obsm[embed].shape
    fits = [k for k in options if adata.obsm[k].shape == shape and not k.endswith("_scvelo")
            and not k.startswith("true_")]
    preferred = f"velocity_{embed.removeprefix('X_')}"
    return preferred if preferred in fits else (fits[0] if fits else None)
