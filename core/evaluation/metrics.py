"""Metrics comparing a predicted perturbed population with the real one, for one group of cells.

Shapes (numpy arrays or torch tensors; everything is computed in float64 on the CPU):
    z_pred     [N, D]  predicted perturbed embeddings (one per control cell that was predicted)
    z_real     [M, D]  real perturbed cells of the same cell type
    z_control  [C, D]  the control cells the prediction started from
    delta_z    [N, D]  z_pred - z_control per predicted cell
    v_z        [N, D]  RNA velocity of those control cells in the same latent space
    confidence [N]     velocity confidence, optional

Mean shifts are population means: shift_pred = mean(z_pred) - mean(z_control), shift_real =
mean(z_real) - mean(z_control), each a D-vector. Every function returns plain floats; an undefined value
(e.g. the correlation of a zero shift) is NaN, never an exception.
"""

from __future__ import annotations

import math

import numpy as np

# Energy distance is O(N M D) in memory on the tensorized backend; beyond this many cells per side a
# seeded random subset is used (2,000 x 2,000 x 512 takes about 0.3 s on 2 CPU cores).
DEFAULT_MAX_CELLS = 2000
DEFAULT_TOP_K = 10


def as_numpy(array) -> np.ndarray:
    """A float64 numpy copy of a numpy array, torch tensor or nested list (torch is not imported here,
    so the app can use these functions without paying for it)."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().double().numpy()
    return np.asarray(array, dtype=np.float64)


def _as_cells(name: str, array) -> np.ndarray:
    cells = as_numpy(array)
    if cells.ndim != 2:
        raise ValueError(f"{name} must be [cells, dims]; got shape {cells.shape}")
    return cells


def _subsample(cells: np.ndarray, max_cells: int | None, rng: np.random.Generator) -> np.ndarray:
    if max_cells is None or len(cells) <= max_cells:
        return cells
    return cells[np.sort(rng.choice(len(cells), size=max_cells, replace=False))]


def energy_distance(x, y, max_cells: int | None = DEFAULT_MAX_CELLS, seed: int = 0) -> float:
    """Energy distance between two cell sets, as ``geomloss.SamplesLoss("energy")`` computes it:

        E(X, Y) = E||X - Y|| - 1/2 E||X - X'|| - 1/2 E||Y - Y'||

    with uniform weights and all pairs (a V-statistic, self-pairs included). This is half of Szekely and
    Rizzo's energy distance, and the quantity the training loss minimises, so both are in the same units.
    It is 0 for identical sets and > 0 otherwise. geomloss floors each pairwise distance at 1e-4, which
    shifts the value by at most 1e-4 / min(N, M).
    """
    import torch
    from geomloss import SamplesLoss

    x, y = _as_cells("x", x), _as_cells("y", y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same number of dims; got {x.shape} and {y.shape}")
    if len(x) == 0 or len(y) == 0:
        return math.nan
    rng = np.random.default_rng(seed)
    x, y = _subsample(x, max_cells, rng), _subsample(y, max_cells, rng)
    loss = SamplesLoss("energy", backend="tensorized")
    return float(loss(torch.from_numpy(x), torch.from_numpy(y)))


def mean_shift(z, z_control) -> np.ndarray:
    """mean(z) - mean(z_control): the population shift, a D-vector."""
    return _as_cells("z", z).mean(0) - _as_cells("z_control", z_control).mean(0)


def pearson(a, b) -> float:
    """Pearson correlation of two vectors; NaN when either is constant (no direction to correlate)."""
    a, b = as_numpy(a).ravel(), as_numpy(b).ravel()
    if a.shape != b.shape:
        raise ValueError(f"vectors must have the same length; got {a.shape} and {b.shape}")
    centred_a, centred_b = a - a.mean(), b - b.mean()
    norm_a, norm_b = np.linalg.norm(centred_a), np.linalg.norm(centred_b)
    # A vector that is constant up to rounding (relative to its size) has no direction either.
    for centred_norm, raw in ((norm_a, a), (norm_b, b)):
        if not np.isfinite(centred_norm) or centred_norm <= 1e-12 * max(np.linalg.norm(raw), 1e-300):
            return math.nan
    return float(np.clip((centred_a @ centred_b) / (norm_a * norm_b), -1.0, 1.0))


def pearson_delta(z_pred, z_real, z_control) -> float:
    """Pearson correlation over the D latent dims between the predicted and the real mean shift
    (State's "Pearson delta"): 1 when the model moves the population the way the perturbation does."""
    return pearson(mean_shift(z_pred, z_control), mean_shift(z_real, z_control))


def mean_errors(z_pred, z_real) -> dict[str, float]:
    """MAE and MSE over the D dims between the predicted and the real population means."""
    gap = _as_cells("z_pred", z_pred).mean(0) - _as_cells("z_real", z_real).mean(0)
    return {"mae_mean": float(np.abs(gap).mean()), "mse_mean": float((gap**2).mean())}


def top_k_dims(shift, k: int) -> np.ndarray:
    """Indices of the k dims with the largest |shift| (ties go to the lower index)."""
    shift = as_numpy(shift).ravel()
    k = min(int(k), shift.size)
    return np.argsort(-np.abs(shift), kind="stable")[:k]


def top_k_overlap(shift_pred, shift_real, k: int = DEFAULT_TOP_K) -> float:
    """Fraction of the real shift's k most shifted latent dims (by |shift|) that are also among the
    prediction's k most shifted dims: |top_k(pred) & top_k(real)| / k, in [0, 1]; NaN if either shift is
    exactly zero (the no-change baseline), which has no most-shifted dims."""
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    if not np.any(as_numpy(shift_pred)) or not np.any(as_numpy(shift_real)):
        return math.nan  # a zero shift ranks no dims; any overlap would be an artefact of tie-breaking
    pred_dims, real_dims = top_k_dims(shift_pred, k), top_k_dims(shift_real, k)
    return len(set(pred_dims.tolist()) & set(real_dims.tolist())) / len(real_dims)


def velocity_agreement(delta_z, v_z, confidence=None, min_confidence: float = 0.0) -> dict[str, float]:
    """How Delta z lines up with RNA velocity, weighted as the training loss weights it
    (``core.velocity.loss``; a test checks they agree): w_i = confidence_i, or 0 below ``min_confidence``
    (1 for every cell without confidences); cells with a zero velocity are left out of the cosine; cells
    whose v_z or confidence is NaN (no velocity) are dropped.

        cos_delta_v      = sum_i w_i cos(delta_z_i, v_z_i) / sum_i w_i       (cos = 0 where delta_z_i = 0)
        magnitude_ratio  = (sum_i w_i ||delta_z_i||) / (sum_i w_i ||v_z_i||)

    The cosine is NaN when every delta_z is zero (nothing moved, so there is no direction).
    """
    delta_z, v_z = _as_cells("delta_z", delta_z), _as_cells("v_z", v_z)
    if delta_z.shape != v_z.shape:
        raise ValueError(f"delta_z and v_z must have the same shape; got {delta_z.shape} and {v_z.shape}")
    keep = np.isfinite(v_z).all(1) & np.isfinite(delta_z).all(1)
    if confidence is None:
        weights = np.ones(len(delta_z))
    else:
        weights = as_numpy(confidence).ravel()
        if weights.shape != (len(delta_z),):
            raise ValueError(f"confidence must be [{len(delta_z)}]; got {weights.shape}")
        if (weights[np.isfinite(weights)] < 0).any():
            raise ValueError("confidence has negative values; expected weights >= 0")
        keep &= np.isfinite(weights)
        weights = np.where(weights >= min_confidence, weights, 0.0)
    weights = np.where(keep, weights, 0.0)
    delta_z, v_z = np.where(keep[:, None], delta_z, 0.0), np.where(keep[:, None], v_z, 0.0)
    norm_delta, norm_v = np.linalg.norm(delta_z, axis=1), np.linalg.norm(v_z, axis=1)
    n_cells = int((weights > 0).sum())
    if n_cells == 0:
        return {"cos_delta_v": math.nan, "magnitude_ratio": math.nan, "n_velocity_cells": 0}
    # Below this norm a velocity has no direction (the same threshold as core.velocity.loss).
    direction_weights = weights * (norm_v > 1e-8)
    denominator = norm_delta * norm_v
    cos = np.divide((delta_z * v_z).sum(1), denominator, out=np.zeros(len(delta_z)), where=denominator > 0)
    moved = bool((norm_delta[weights > 0] > 0).any())
    if direction_weights.sum() > 0 and moved:
        cos_mean = float((direction_weights * cos).sum() / direction_weights.sum())
    else:
        cos_mean = math.nan
    v_total = float((weights * norm_v).sum())
    ratio = float((weights * norm_delta).sum()) / v_total if v_total > 0 else math.nan
    return {"cos_delta_v": cos_mean, "magnitude_ratio": ratio, "n_velocity_cells": n_cells}


def group_metrics(
    z_pred,
    z_real,
    z_control,
    delta_z=None,
    v_z=None,
    confidence=None,
    min_confidence: float = 0.0,
    top_k: int = DEFAULT_TOP_K,
    max_cells: int | None = DEFAULT_MAX_CELLS,
    seed: int = 0,
) -> dict[str, float]:
    """All metrics for one group (a cell type, or every held-out cell): energy_distance, pearson_delta,
    mae_mean, mse_mean, top_k_overlap, and cos_delta_v / magnitude_ratio when v_z is given."""
    z_pred, z_real, z_control = _as_cells("z_pred", z_pred), _as_cells("z_real", z_real), _as_cells(
        "z_control", z_control
    )
    shift_pred, shift_real = mean_shift(z_pred, z_control), mean_shift(z_real, z_control)
    out = {
        "n_pred": len(z_pred),
        "n_real": len(z_real),
        "n_control": len(z_control),
        "energy_distance": energy_distance(z_pred, z_real, max_cells=max_cells, seed=seed),
        "pearson_delta": pearson(shift_pred, shift_real),
        **mean_errors(z_pred, z_real),
        "top_k_overlap": top_k_overlap(shift_pred, shift_real, top_k),
    }
    if v_z is not None:
        if delta_z is None:
            raise ValueError("delta_z is needed with v_z")
        out.update(velocity_agreement(delta_z, v_z, confidence, min_confidence))
    return out
