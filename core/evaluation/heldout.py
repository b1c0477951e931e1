"""Score predictions on held-out cells against the real perturbed cells, the baselines and a noise floor.

Groups are (perturbation, cell type) pairs; for burn/sham there is one perturbation, so a group is a
cell type. For each group, with the held-out split's cells:
    z_control  the control cells that were predicted (each prediction's ``matched_control``)
    z_pred     the model's prediction for each of them
    z_real     the real perturbed cells of that perturbation and cell type
Methods scored with ``metrics.group_metrics``: ``model`` (z_pred as predicted) and every predictor of
``core.evaluation.baselines`` (no change, global and per-cell-type mean shift, Gaussian OT map, resampled
training burn cells), each fitted on the training split; ``real_split_half`` (the held-out real cells, half
against half) is the floor that sampling noise sets, shown beside them but never "best".
Where the data set holds a true velocity (``DataKeys.true_velocity_key``: the demo's), ``cos_delta_true_v``
is the unweighted mean over predicted cells of cos(delta_z, true velocity of the control cell).
``overall`` is the mean over groups (each cell type counts once); ``all_cells`` pools every held-out cell.
``best`` names, per metric, the method with the best overall value. A baseline that cannot exist for a group
(e.g. a per-cell-type baseline for a held-out cell type) is NaN there, and ``unavailable`` says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from core.errors import DataError
from core.evaluation import metrics
from core.evaluation.baselines import (
    DESCRIPTIONS,
    FLOOR,
    PREDICTORS,
    Baselines,
    mean_pairwise_distance,
    size_matched_floor,
    split_half,
)

METHODS = ("model", *PREDICTORS)
# Which way is better, for the "does the model beat the baselines" summary.
HIGHER_IS_BETTER = {
    "energy_distance": False,
    "pearson_delta": True,
    "mae_mean": False,
    "mse_mean": False,
    "top_k_overlap": True,
    "cos_delta_v": True,
    "cos_delta_true_v": True,
}
METRIC_COLUMNS = (
    "n_pred",
    "n_real",
    "n_control",
    "energy_distance",
    "pearson_delta",
    "mae_mean",
    "mse_mean",
    "top_k_overlap",
    "cos_delta_v",
    "magnitude_ratio",
    "n_velocity_cells",
    "cos_delta_true_v",
)


@dataclass
class DataKeys:
    """Where things live in the AnnData (the run's ``data.kwargs``)."""

    embed_key: str
    pert_col: str
    control_pert: str
    cell_type_key: str
    velocity_key: str | None = None
    confidence_key: str | None = None
    true_velocity_key: str | None = None  # a known true velocity (the demo's obsm['true_velocity_pca'])


@dataclass
class PredictionKeys:
    """Where ``core.infer.predict`` puts its results in the predictions AnnData."""

    z_pred: str = "X_pred"
    delta_z: str = "delta_z"
    matched_control: str = "matched_control"


@dataclass
class Evaluation:
    """Result of ``evaluate_predictions``: a JSON-ready summary and one row per (group, method)."""

    summary: dict
    per_group: object  # pandas.DataFrame
    notes: list[str] = field(default_factory=list)


def _row_index(adata, names, what: str) -> np.ndarray:
    positions = adata.obs_names.get_indexer(names)
    if (positions < 0).any():
        missing = list(np.asarray(names)[positions < 0][:3])
        raise DataError(
            f"{what} names cells that are not in the data set (e.g. {missing}); evaluate with the data set "
            "the run was trained on"
        )
    return positions


def _macro_mean(rows: list[dict]) -> dict:
    out = {}
    for column in METRIC_COLUMNS:
        values = np.array([row.get(column, math.nan) for row in rows], dtype=np.float64)
        if column.startswith("n_"):
            out[column] = int(np.nansum(values))
        else:
            finite = values[np.isfinite(values)]
            out[column] = float(finite.mean()) if finite.size else math.nan
    return out


def _beats(summary_by_method: dict) -> dict:
    """For each metric: does the model do better than each baseline (None when either is undefined)."""
    model = summary_by_method["model"]
    verdict = {}
    for metric, higher in HIGHER_IS_BETTER.items():
        verdict[metric] = {}
        for baseline in METHODS[1:]:
            a, b = model.get(metric, math.nan), summary_by_method[baseline].get(metric, math.nan)
            if not (math.isfinite(a) and math.isfinite(b)):
                verdict[metric][baseline] = None
            else:
                verdict[metric][baseline] = bool(a > b) if higher else bool(a < b)
    return verdict


def best_methods(summary_by_method: dict, methods=METHODS) -> dict:
    """Per metric of ``HIGHER_IS_BETTER``: the method (of ``methods``) with the best finite value, or None."""
    best = {}
    for metric, higher in HIGHER_IS_BETTER.items():
        values = {m: summary_by_method.get(m, {}).get(metric, math.nan) for m in methods}
        finite = {m: v for m, v in values.items() if v is not None and math.isfinite(v)}
        best[metric] = (max if higher else min)(finite, key=finite.get) if finite else None
    return best


def evaluate_predictions(
    predictions,
    adata,
    split,
    keys: DataKeys,
    prediction_keys: PredictionKeys | None = None,
    eval_split: str = "test",
    min_confidence: float = 0.0,
    top_k: int = metrics.DEFAULT_TOP_K,
    max_cells: int | None = metrics.DEFAULT_MAX_CELLS,
    seed: int = 0,
    with_baselines: bool = True,
) -> Evaluation:
    """Score ``predictions`` (rows = predicted control cells) against the real perturbed cells of
    ``adata`` in ``eval_split`` and against the baselines.

    ``split`` maps obs names to train/val/test (a pandas Series, e.g. the run's split.csv); cells of
    ``adata`` missing from it are ignored. Velocity metrics are computed when ``keys.velocity_key`` is in
    ``adata.obsm``, weighted by ``keys.confidence_key`` when that is in ``adata.obs``. ``with_baselines=False``
    scores the model alone (a second checkpoint of a run whose baselines are already scored).
    """
    import pandas as pd

    pk = prediction_keys or PredictionKeys()
    cells = _predicted_cells(predictions, adata, keys, pk)
    labels = _labels(predictions, adata, keys, split, cells.control_rows)
    scorer = _Scorer(adata, keys, cells.control_rows, min_confidence, top_k, max_cells, seed)
    methods = METHODS if with_baselines else ("model",)
    scored = (*methods, FLOOR) if with_baselines else methods
    baselines = Baselines(cells.embedding, labels.pert, labels.cell_type, labels.cell_split == "train",
                          keys.control_pert, seed=seed) if with_baselines else None
    groups = _score_groups(cells, labels, scorer, baselines, scored, eval_split, max_cells, seed)
    if not groups.table:
        raise DataError(
            f"no cell type has both predictions and real perturbed cells in the {eval_split} split; "
            "check the split (split.csv) and the perturbation column"
        )
    overall = {method: _macro_mean(groups.per_method[method]) for method in scored}
    for method in groups.unavailable:
        # A mean over fewer cell types than the model's would not be comparable with it.
        overall[method] = {k: (v if k.startswith("n_") else math.nan) for k, v in overall[method].items()}
    all_cells = _pooled_scores(groups.pooled, scored, scorer, max_cells, seed)
    notes = list(scorer.notes)
    for method, reasons in groups.unavailable.items():
        for label, reason in reasons.items():
            notes.append(f"{label}: no {method} baseline ({reason})")
    per_group = pd.DataFrame(groups.table)
    for column in METRIC_COLUMNS:
        if column not in per_group:
            per_group[column] = np.nan
    per_group = per_group[["perturbation", "cell_type", "method", *METRIC_COLUMNS]]
    summary = {
        "split": eval_split,
        "methods": {"model": "the run's predictions", **{m: DESCRIPTIONS[m] for m in scored if m != "model"}},
        "overall": overall,
        "all_cells": all_cells,
        "per_cell_type": _per_cell_type(groups.table, len(labels.perturbations)),
        "model_beats_baseline": _beats(overall) if with_baselines else {},
        "best": best_methods(overall, methods),
        "floor": FLOOR if with_baselines else None,
        "unavailable": groups.unavailable,
        "skipped": groups.skipped,
        "settings": {
            "top_k": int(top_k),
            "energy_max_cells": max_cells,
            "seed": int(seed),
            "min_confidence": float(min_confidence),
            "energy_distance": "E|X-Y| - 1/2 E|X-X'| - 1/2 E|Y-Y'| (geomloss 'energy', V-statistic)",
            "overall": "mean over groups (each cell type counts once); all_cells pools every held-out cell",
        },
        "notes": notes,
    }
    return Evaluation(summary=summary, per_group=per_group, notes=notes)


@dataclass
class _PredictedCells:
    embedding: np.ndarray  # [cells of adata, D]
    z_pred: np.ndarray  # [predictions, D]
    control_rows: np.ndarray  # [predictions]: each prediction's control cell, a row of adata
    z_control: np.ndarray  # [predictions, D]
    delta: np.ndarray  # [predictions, D] = z_pred - z_control


def _predicted_cells(predictions, adata, keys: DataKeys, pk: PredictionKeys) -> _PredictedCells:
    """Step 1: the predictions and their control cells, checked to belong to ``adata``."""
    if pk.z_pred not in predictions.obsm:
        raise DataError(f"the predictions have no obsm['{pk.z_pred}']; make them with 'python -m core infer'")
    if pk.matched_control not in predictions.obs:
        raise DataError(
            f"the predictions have no obs['{pk.matched_control}'] naming each prediction's control cell"
        )
    if keys.embed_key not in adata.obsm:
        raise DataError(f"the data set has no obsm['{keys.embed_key}'], the embedding the run was trained on")
    for column in (keys.pert_col, keys.cell_type_key):
        if column not in adata.obs:
            raise DataError(f"the data set has no obs column '{column}' (set in the run's data.kwargs)")
    embedding = np.asarray(adata.obsm[keys.embed_key], dtype=np.float64)
    z_pred = np.asarray(predictions.obsm[pk.z_pred], dtype=np.float64)
    if z_pred.shape[1] != embedding.shape[1]:
        raise DataError(
            f"predictions have {z_pred.shape[1]} dims but obsm['{keys.embed_key}'] has "
            f"{embedding.shape[1]}; evaluate with the embedding the run was trained on"
        )
    matched = predictions.obs[pk.matched_control].astype(str).to_numpy()
    control_rows = _row_index(adata, matched, "matched_control")
    z_control = embedding[control_rows]
    delta = z_pred - z_control
    if pk.delta_z in predictions.obsm:
        stored = np.asarray(predictions.obsm[pk.delta_z], dtype=np.float64)
        tolerance = 1e-3 * (1.0 + np.abs(z_pred).max(initial=0.0))
        if stored.shape != delta.shape or np.abs(stored - delta).max(initial=0.0) > tolerance:
            raise DataError(
                f"obsm['{pk.delta_z}'] of the predictions is not z_pred - z_control of their matched control "
                "cells; the predictions do not belong to this data set"
            )
    return _PredictedCells(embedding, z_pred, control_rows, z_control, delta)


@dataclass
class _Labels:
    pert: np.ndarray  # per cell of adata
    cell_type: np.ndarray
    cell_split: np.ndarray
    perturbations: list[str]  # the non-control perturbations of the data set
    pred_pert: np.ndarray  # per prediction: the perturbation it stands for
    pred_type: np.ndarray  # per prediction: its control cell's type


def _labels(predictions, adata, keys: DataKeys, split, control_rows) -> _Labels:
    """Step 2: perturbation, cell type and split of every cell, and which group each prediction belongs to."""
    import pandas as pd

    obs = adata.obs
    pert = obs[keys.pert_col].astype(str).to_numpy()
    cell_type = obs[keys.cell_type_key].astype(str).to_numpy()
    cell_split = pd.Series(split).astype(str).reindex(adata.obs_names).fillna("").to_numpy()
    is_control = pert == str(keys.control_pert)
    # The perturbation each prediction stands for: a column of the predictions if they say so, else the
    # only non-control perturbation of the data set.
    perturbations = sorted(set(pert[~is_control]))
    pred_pert = None
    if keys.pert_col in predictions.obs:
        pred_pert = predictions.obs[keys.pert_col].astype(str).to_numpy()
        if set(pred_pert) <= {str(keys.control_pert)}:
            pred_pert = None
    if pred_pert is None:
        if len(perturbations) != 1:
            raise DataError(
                f"the predictions do not say which perturbation they predict (obs '{keys.pert_col}') and "
                f"the data set has {len(perturbations)}; predict with the perturbation column set"
            )
        pred_pert = np.full(len(predictions), perturbations[0], dtype=object)
    return _Labels(pert, cell_type, cell_split, perturbations, pred_pert, cell_type[control_rows])


class _Scorer:
    """Step 3: ``group_metrics`` with the velocity arrays of the predicted cells (rows index the predictions),
    plus cos(delta_z, true velocity) where the data set has a true velocity."""

    def __init__(self, adata, keys: DataKeys, control_rows, min_confidence, top_k, max_cells, seed):
        import pandas as pd

        self.velocity = self.confidence = self.true_velocity = None
        self.notes: list[str] = []
        self.settings = dict(min_confidence=min_confidence, top_k=top_k, max_cells=max_cells, seed=seed)
        obs = adata.obs
        if keys.velocity_key and keys.velocity_key in adata.obsm:
            self.velocity = np.asarray(adata.obsm[keys.velocity_key], dtype=np.float64)[control_rows]
            if keys.confidence_key and keys.confidence_key in obs:
                confidence = pd.to_numeric(obs[keys.confidence_key], errors="coerce").to_numpy(np.float64)
                self.confidence = confidence[control_rows]
            elif keys.confidence_key:
                self.notes.append(f"no obs['{keys.confidence_key}']: velocity metrics are unweighted")
        elif keys.velocity_key:
            self.notes.append(f"no obsm['{keys.velocity_key}']: no velocity metrics")
        if keys.true_velocity_key and keys.true_velocity_key in adata.obsm:
            self.true_velocity = np.asarray(adata.obsm[keys.true_velocity_key], dtype=np.float64)[control_rows]

    def __call__(self, z_pred, z_real, z_control, delta_z, rows) -> dict:
        def pick(array):
            return None if array is None or rows is None else array[rows]

        result = metrics.group_metrics(z_pred, z_real, z_control, delta_z=delta_z, v_z=pick(self.velocity),
                                       confidence=pick(self.confidence), **self.settings)
        if self.true_velocity is not None and rows is not None and delta_z is not None:
            truth = metrics.velocity_agreement(delta_z, self.true_velocity[rows])
            result["cos_delta_true_v"] = truth["cos_delta_v"]
        return result


@dataclass
class _GroupScores:
    table: list = field(default_factory=list)  # one row per (group, method)
    per_method: dict = field(default_factory=dict)  # method -> its rows
    pooled: dict = field(default_factory=dict)  # method -> arrays of every group, for all_cells
    skipped: dict = field(default_factory=dict)  # group -> why it has no score
    unavailable: dict = field(default_factory=dict)  # method -> group -> why it does not exist there


def _candidates(cells: _PredictedCells, baselines, perturbation, kind, rows, z_real, label, unavailable, seed):
    """method -> (z_pred, z_reference, delta_z, rows of the velocity arrays), or None where it cannot exist."""
    z_control = cells.z_control[rows]
    candidates: dict[str, tuple | None] = {"model": (cells.z_pred[rows], z_real, cells.delta[rows], rows)}
    if baselines is None:
        return candidates
    for method, prediction in baselines.predict(perturbation, kind, z_control).items():
        if prediction.z_pred is None:
            candidates[method] = None
            unavailable.setdefault(method, {})[label] = prediction.reason
        else:
            candidates[method] = (prediction.z_pred, z_real, prediction.z_pred - z_control, rows)
    halves = split_half(z_real, seed)
    if halves is None:
        candidates[FLOOR] = None
        unavailable.setdefault(FLOOR, {})[label] = f"fewer than 4 real '{perturbation}' cells"
    else:
        candidates[FLOOR] = (halves[0], halves[1], None, None)
    return candidates


def _score_groups(cells, labels: _Labels, scorer, baselines, scored, eval_split, max_cells, seed) -> _GroupScores:
    """Step 4: every method on every (perturbation, cell type) group of the predictions."""
    out = _GroupScores(per_method={m: [] for m in scored},
                       pooled={m: {"z_pred": [], "delta": [], "rows": [], "real": [], "control": []} for m in scored})
    for perturbation, kind in sorted(set(zip(labels.pred_pert.tolist(), labels.pred_type.tolist()))):
        label = kind if len(labels.perturbations) == 1 else f"{perturbation} / {kind}"
        rows = np.flatnonzero((labels.pred_pert == perturbation) & (labels.pred_type == kind))
        real = (labels.pert == perturbation) & (labels.cell_type == kind) & (labels.cell_split == eval_split)
        if not real.any():
            out.skipped[label] = f"no real '{perturbation}' cells of this type in the {eval_split} split"
            continue
        z_real, z_control = cells.embedding[real], cells.z_control[rows]
        candidates = _candidates(cells, baselines, perturbation, kind, rows, z_real, label, out.unavailable, seed)
        for method, candidate in candidates.items():
            if candidate is None or not np.isfinite(candidate[0]).all():
                result = {"n_pred": len(z_control), "n_real": int(real.sum()), "n_control": len(z_control),
                          **{m: math.nan for m in HIGHER_IS_BETTER if not m.startswith("cos_")}}
            else:
                z_pred, z_ref, delta_z, velocity_rows = candidate
                result = scorer(z_pred, z_ref, z_control, delta_z, velocity_rows)
                if method == FLOOR:
                    result["energy_distance"] = size_matched_floor(
                        result["energy_distance"], mean_pairwise_distance(z_real, max_cells, seed),
                        (len(z_pred), len(z_ref)), (len(rows), len(z_real)), max_cells)
                bucket = out.pooled[method]
                bucket["z_pred"].append(z_pred)
                bucket["real"].append(z_ref)
                bucket["control"].append(z_control)
                if delta_z is not None:
                    bucket["delta"].append(delta_z)
                    bucket["rows"].append(velocity_rows)
            out.per_method[method].append(result)
            out.table.append({"perturbation": perturbation, "cell_type": kind, "method": method, **result})
    return out


def _pooled_scores(pooled: dict, scored, scorer, max_cells, seed) -> dict:
    """Step 5: every method on all held-out cells pooled (``all_cells``)."""
    all_cells = {}
    for method in scored:
        bucket = pooled[method]
        if not bucket["z_pred"]:
            continue
        has_rows = len(bucket["rows"]) == len(bucket["z_pred"])
        z_pred, z_ref = np.concatenate(bucket["z_pred"]), np.concatenate(bucket["real"])
        all_cells[method] = scorer(
            z_pred,
            z_ref,
            np.concatenate(bucket["control"]),
            np.concatenate(bucket["delta"]) if has_rows else None,
            np.concatenate(bucket["rows"]) if has_rows else None,
        )
        if method == FLOOR:
            n_pred, n_real = all_cells["model"]["n_pred"], all_cells["model"]["n_real"]
            dbar = mean_pairwise_distance(np.concatenate([z_pred, z_ref]), max_cells, seed)
            all_cells[method]["energy_distance"] = size_matched_floor(
                all_cells[method]["energy_distance"], dbar, (len(z_pred), len(z_ref)), (n_pred, n_real), max_cells)
    return all_cells


def _per_cell_type(table: list, n_perturbations: int) -> dict:
    """Step 6: the per-group rows as group -> method -> metrics, for metrics.json."""
    out: dict = {}
    for row in table:
        name = row["cell_type"] if n_perturbations == 1 else f"{row['perturbation']} / {row['cell_type']}"
        out.setdefault(name, {})[row["method"]] = {
            key: value for key, value in row.items() if key not in ("perturbation", "cell_type", "method")
        }
    return out
