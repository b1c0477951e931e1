"""Velocity alignment: the shift the model predicts for a control cell should follow its RNA velocity.

Shapes: N cells, D latent dimensions.
    delta_z     [N, D]  z_pred - z_control, the predicted perturbation shift of each control cell
    v_z         [N, D]  that cell's RNA velocity projected into the same latent space
    confidence  [N]     scvelo's velocity confidence (or any non-negative weight), optional

Alignment loss, per cell i with weight w_i:
    L_dir,i = 1 - cos(delta_z_i, v_z_i)                       in [0, 2]
    L_mag,i = | ||delta_z_i|| - ||v_z_i|| |                    latent units
    L       = sum_i w_i L_dir,i / sum_i w_i  +  beta * sum_i w_i L_mag,i / sum_i w_i
Regularisation loss (the plain alternative): L = sum_i w_i ||delta_z_i - v_z_i||^2 / sum_i w_i.

Weights are the confidences (1 without them), and cells whose confidence is below ``min_confidence`` get
weight 0. All arithmetic is in float32 whatever the autocast dtype, and every metric is read back to the
host in one transfer, so logging them costs one synchronisation per step.
"""

from __future__ import annotations

import torch
from torch import nn

# Below this norm a vector has no usable direction; also keeps sqrt's gradient finite at 0.
_EPS = 1e-8


def _safe_norm(x: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over the last axis whose gradient is 0 (not NaN) at x = 0."""
    return x.pow(2).sum(-1).clamp_min(_EPS**2).sqrt()


def _check_inputs(delta_z: torch.Tensor, v_z: torch.Tensor, confidence: torch.Tensor | None) -> None:
    if delta_z.ndim != 2 or v_z.shape != delta_z.shape:
        raise ValueError(
            f"delta_z and v_z must both be [N, D] with the same shape; got delta_z {tuple(delta_z.shape)} "
            f"and v_z {tuple(v_z.shape)}"
        )
    if confidence is not None and tuple(confidence.shape) != (delta_z.shape[0],):
        raise ValueError(
            f"confidence must be [N] = [{delta_z.shape[0]}] (one value per cell); "
            f"got {tuple(confidence.shape)}"
        )
    no = torch.tensor(False, device=delta_z.device)
    checks = {
        "delta_z contains NaN or inf values; expected finite numbers": ~torch.isfinite(delta_z).all(),
        "v_z contains NaN or inf values; expected finite numbers": ~torch.isfinite(v_z).all(),
        "confidence contains NaN or inf values; expected finite numbers":
            no if confidence is None else ~torch.isfinite(confidence).all(),
        "confidence has negative values; expected weights >= 0 (e.g. scvelo's velocity_confidence)":
            no if confidence is None else (confidence < 0).any(),
    }
    # One host synchronisation for all checks rather than one each.
    for message, failed in zip(checks, torch.stack(list(checks.values())).tolist()):
        if failed:
            raise ValueError(message)


def _cell_weights(n: int, confidence: torch.Tensor | None, min_confidence: float, device) -> torch.Tensor:
    if confidence is None:
        return torch.ones(n, device=device)
    confidence = confidence.float()
    return torch.where(confidence >= min_confidence, confidence, torch.zeros_like(confidence))


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Sum(w v) / Sum(w), and 0 (still attached to the graph) when every weight is 0."""
    total = weights.sum()
    return (weights * values).sum() / total.clamp_min(torch.finfo(values.dtype).tiny)


class _VelocityLoss(nn.Module):
    def __init__(self, min_confidence: float = 0.0):
        super().__init__()
        if min_confidence < 0:
            raise ValueError(f"min_confidence must be >= 0; got {min_confidence}")
        self.min_confidence = float(min_confidence)

    def _prepare(self, delta_z, v_z, confidence):
        _check_inputs(delta_z, v_z, confidence)
        delta_z, v_z = delta_z.float(), v_z.float()
        weights = _cell_weights(delta_z.shape[0], confidence, self.min_confidence, delta_z.device)
        norm_st, norm_v = _safe_norm(delta_z), _safe_norm(v_z)
        cos = (delta_z * v_z).sum(-1) / (norm_st * norm_v)
        # A cell with no velocity has no direction to align to, and a zero shift has none to align: either is
        # left out of every cosine term. The second matters at the first step of a model whose head starts at
        # zero: the cosine's gradient there is v_hat / ||delta_z||, about 1e8, which made the step's gradient
        # norm 2.7e5 and swamped the distributional term's direction.
        has_direction = ((v_z.pow(2).sum(-1) > _EPS**2) & (delta_z.pow(2).sum(-1) > _EPS**2)).float()
        return delta_z, v_z, weights, norm_st, norm_v, cos, has_direction

    @staticmethod
    def _metrics(named: dict[str, torch.Tensor], weights, confidence) -> dict[str, float]:
        counted = weights > 0
        named = dict(named)
        named["n_cells"] = counted.sum()
        if confidence is not None:
            named["avg_confidence"] = _weighted_mean(confidence.float(), counted.float())
        values = torch.stack([v.detach().float() for v in named.values()]).tolist()
        out = dict(zip(named.keys(), values))
        out["n_cells"] = int(out["n_cells"])
        return out


class VelocityAlignmentLoss(_VelocityLoss):
    """Direction (1 - cosine) plus beta times the magnitude gap, confidence-weighted.

    Cells whose v_z is zero have no direction and are left out of the direction term (they still count in
    the magnitude term, where a zero velocity asks for no shift); so are cells whose delta_z is exactly zero
    (a zero-initialised head at step 0), whose direction is undefined. A batch in which no cell counts returns
    a zero loss that still backpropagates.
    """

    def __init__(self, beta: float = 1.0, use_magnitude: bool = True, min_confidence: float = 0.0):
        super().__init__(min_confidence)
        if beta < 0:
            raise ValueError(f"beta must be >= 0; got {beta}")
        self.beta = float(beta)
        self.use_magnitude = bool(use_magnitude)

    def forward(self, delta_z, v_z, confidence=None):
        delta_z, v_z, weights, norm_st, norm_v, cos, has_direction = self._prepare(delta_z, v_z, confidence)
        direction = _weighted_mean(1.0 - cos, weights * has_direction)
        magnitude = _weighted_mean((norm_st - norm_v).abs(), weights)
        loss = direction + self.beta * magnitude if self.use_magnitude else direction
        metrics = self._metrics(
            {
                "direction": direction,
                "magnitude": magnitude,
                "cos_similarity": _weighted_mean(cos, weights * has_direction),
                "magnitude_st": _weighted_mean(norm_st, weights),
                "magnitude_v": _weighted_mean(norm_v, weights),
                "n_direction_cells": (weights * has_direction > 0).sum(),
            },
            weights,
            confidence,
        )
        metrics["n_direction_cells"] = int(metrics["n_direction_cells"])
        return loss, metrics


class VelocityRegularizationLoss(_VelocityLoss):
    """The plain squared distance ||delta_z - v_z||^2, confidence-weighted, with the same masking."""

    def forward(self, delta_z, v_z, confidence=None):
        delta_z, v_z, weights, norm_st, norm_v, cos, has_direction = self._prepare(delta_z, v_z, confidence)
        loss = _weighted_mean((delta_z - v_z).pow(2).sum(-1), weights)
        metrics = self._metrics(
            {
                "regularization": loss,
                "cos_similarity": _weighted_mean(cos, weights * has_direction),
                "magnitude_st": _weighted_mean(norm_st, weights),
                "magnitude_v": _weighted_mean(norm_v, weights),
            },
            weights,
            confidence,
        )
        return loss, metrics
