"""Warnings about how a run was set up or how it went, from its settings, status and metrics: a velocity
warm-up longer than the run, a run too short to read anything into, a validation loss far above the
training loss. Plain sentences that say what to change; the app shows them with the run, the CLI can print
them."""

from __future__ import annotations

import numpy as np
import pandas as pd

FEW_STEPS = 20          # fewer steps than this: curves and metrics are mostly noise
GAP_RATIO = 1.5         # validation loss this many times the (smoothed) training loss: worth a look


def run_warnings(config: dict, status: dict, metrics: pd.DataFrame | None) -> list[str]:
    """``config``: the run's flattened config (dotted keys, ``core.runs.list_runs``); ``status``: its
    status.json; ``metrics``: ``core.runs.read_metrics``."""
    out = []
    total = status.get("total_steps")
    if config.get("model.kwargs.use_velocity_alignment") and total:
        warmup = config.get("model.kwargs.velocity_warmup_steps") or 0
        if warmup >= total:
            reached = total / warmup if warmup else 1.0
            out.append(f"the velocity warm-up ({warmup} steps) is not shorter than the run ({total} steps): "
                       f"λ_t only reaches {reached:.2f}, so the velocity term never has its full weight; "
                       "shorten the warm-up or train longer")
    if total and total < FEW_STEPS:
        out.append(f"the run has only {total} training steps: too few for its curves or metrics to mean much; "
                   "train for more epochs or steps")
    gap = _train_val_gap(metrics)
    if gap is not None:
        step, val, train = gap
        out.append(f"at step {step} the validation loss ({val:.3g}) is {val / train:.1f}× the training loss "
                   f"({train:.3g}): the model may be fitting the training cells only; try fewer epochs, a lower "
                   "learning rate or more data")
    return out


def _train_val_gap(metrics: pd.DataFrame | None):
    """(step, val_loss, train loss) at the last validation, when val is over GAP_RATIO × train."""
    if metrics is None or metrics.empty or "split" not in metrics or "val_loss" not in metrics:
        return None
    val = metrics[(metrics["split"] == "val") & metrics["val_loss"].notna()]
    train = metrics[(metrics["split"] == "train") & metrics.get("loss", pd.Series(dtype=float)).notna()]
    if val.empty or train.empty:
        return None
    last = val.sort_values("step").iloc[-1]
    # the training loss around that step (median of the last 10 steps up to it), not one noisy batch
    recent = train[train["step"] <= last["step"]].sort_values("step")["loss"].tail(10)
    if recent.empty:
        return None
    train_loss = float(np.median(recent))
    if train_loss > 0 and float(last["val_loss"]) > GAP_RATIO * train_loss:
        return int(last["step"]), float(last["val_loss"]), train_loss
    return None
