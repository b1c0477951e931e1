"""Training-stability figures of one run, from its metrics.jsonl rows (``core.runs.read_metrics``).

- Gradient-norm spread: percentiles p5, p50, p95 and the maximum of ``grad_norm`` (the norm before
  clipping) over the training steps. A wide p95/p50 gap or a huge max means occasional gradient bursts.
- Loss spikes: a training step whose ``loss`` exceeds ``spike_factor`` (3) times the running median of
  the previous ``window`` (50) training steps' losses. The median of the *previous* steps is used so a
  spike does not raise its own threshold. Counting starts at the second step (``min_history`` 1): runs
  that blow up do so early (issue 10: at lr 0.1 both arms diverged in steps 3-11, which a 10-step wait hid).
  Non-finite losses are counted on their own and left out of the medians.
- Peak loss ratio: the largest finite training loss over the first finite one (NaN when there is none or
  the first is not positive). Above 1 the loss rose above where it started at some point.

Only numpy and pandas are used, so the app's Compare page can call this without importing torch.
"""

from __future__ import annotations

import math

import numpy as np

SPIKE_FACTOR = 3.0
SPIKE_WINDOW = 50
SPIKE_MIN_HISTORY = 1


def _train_rows(metrics_df):
    if metrics_df is None or len(metrics_df) == 0:
        return metrics_df.iloc[0:0] if metrics_df is not None else None
    if "split" in metrics_df.columns:
        return metrics_df[metrics_df["split"].fillna("train") == "train"]
    return metrics_df


def _column(frame, name: str) -> np.ndarray:
    if frame is None or name not in frame.columns:
        return np.array([], dtype=np.float64)
    import pandas as pd

    return pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64)


def loss_spikes(
    losses,
    spike_factor: float = SPIKE_FACTOR,
    window: int = SPIKE_WINDOW,
    min_history: int = SPIKE_MIN_HISTORY,
) -> np.ndarray:
    """Positions i of the steps with loss[i] > spike_factor * median(previous `window` finite losses),
    counted once at least `min_history` previous finite losses exist."""
    if window < 1 or min_history < 1 or spike_factor <= 0:
        raise ValueError("window and min_history must be >= 1 and spike_factor > 0")
    losses = np.asarray(losses, dtype=np.float64)
    history: list[float] = []
    spikes = []
    for position, loss in enumerate(losses):
        if not math.isfinite(loss):
            continue
        recent = history[-window:]
        if len(recent) >= min_history and loss > spike_factor * float(np.median(recent)):
            spikes.append(position)
        history.append(loss)
    return np.asarray(spikes, dtype=np.int64)


def peak_loss_ratio(losses) -> float:
    """max(finite losses) / first finite loss; NaN without finite losses or with a first loss <= 0."""
    finite = np.asarray(losses, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0 or finite[0] <= 0:
        return math.nan
    return float(finite.max() / finite[0])


def stability_summary(
    metrics_df,
    spike_factor: float = SPIKE_FACTOR,
    window: int = SPIKE_WINDOW,
    min_history: int = SPIKE_MIN_HISTORY,
) -> dict:
    """Gradient-norm percentiles and loss-spike count of a run's training rows.

    Returns a JSON-ready dict: n_steps, grad_norm_p5, grad_norm_p50, grad_norm_p95, grad_norm_max (NaN
    without gradient norms), loss_spikes (count), loss_spike_steps (their ``step`` values),
    nonfinite_losses, peak_loss_ratio (max / first finite loss), and the spike_factor / spike_window /
    spike_min_history used.
    """
    train = _train_rows(metrics_df)
    losses = _column(train, "loss")
    grad_norms = _column(train, "grad_norm")
    grad_norms = grad_norms[np.isfinite(grad_norms)]
    if grad_norms.size:
        p5, p50, p95 = (float(v) for v in np.percentile(grad_norms, [5, 50, 95]))
        grad_max = float(grad_norms.max())
    else:
        p5 = p50 = p95 = grad_max = math.nan
    spike_positions = loss_spikes(losses, spike_factor, window, min_history)
    steps = _column(train, "step")
    if steps.size == losses.size and steps.size:
        spike_steps = [int(steps[i]) if math.isfinite(steps[i]) else int(i) for i in spike_positions]
    else:
        spike_steps = [int(i) for i in spike_positions]
    return {
        "n_steps": int(losses.size),
        "grad_norm_p5": p5,
        "grad_norm_p50": p50,
        "grad_norm_p95": p95,
        "grad_norm_max": grad_max,
        "loss_spikes": len(spike_steps),
        "loss_spike_steps": spike_steps,
        "nonfinite_losses": int((~np.isfinite(losses)).sum()),
        "peak_loss_ratio": peak_loss_ratio(losses),
        "spike_factor": float(spike_factor),
        "spike_window": int(window),
        "spike_min_history": int(min_history),
    }
