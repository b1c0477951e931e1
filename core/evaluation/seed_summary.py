"""Evaluation metrics per configuration: readable names with the direction that is better, mean ± s.d.
over the seeds of each configuration, and which configuration is best on each metric.

Input: each run's ``eval/metrics.json`` ``overall.model`` block (``core.figures.run.read_evaluation``) and the
configurations of ``core.figures.compare.group_by_configuration`` (runs that differ only by seed).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

# metric -> (readable name, which way is better: "lower", "higher", or "one" = closest to 1)
METRICS = {
    "energy_distance": ("energy distance to the real burn cells", "lower"),
    "pearson_delta": ("Pearson r of the predicted vs real shift", "higher"),
    "mae_mean": ("mean absolute error of the mean shift", "lower"),
    "mse_mean": ("mean squared error of the mean shift", "lower"),
    "top_k_overlap": ("top-k gene overlap of the shift", "higher"),
    "cos_delta_v": ("cos(Δz, v_z), velocity agreement", "higher"),
    "magnitude_ratio": ("‖Δz‖ / ‖v_z‖", "one"),
}
ARROWS = {"lower": "↓", "higher": "↑", "one": "→ 1"}


def metric_label(metric: str) -> str:
    """'energy_distance' -> 'energy distance to the real burn cells ↓'; unknown metrics keep their name."""
    name, better = METRICS.get(metric, (metric, None))
    return f"{name} {ARROWS[better]}" if better else name


def _score(metric: str, value: float) -> float:
    """Smaller is better, whatever the metric's direction."""
    better = METRICS.get(metric, (None, "lower"))[1]
    if better == "higher":
        return -value
    if better == "one":
        return abs(value - 1.0)
    return value


def per_configuration(evaluations: dict[str, dict], groups: dict[str, list[str]]) -> dict[str, pd.DataFrame]:
    """``evaluations``: run -> {metric: value} (the model's overall metrics; None/NaN allowed).
    Returns {"mean", "sd", "n"}: configuration x metric frames (sd NaN with a single seed; n = seeds with
    a value), and "best": configuration x metric booleans, True where the mean is best among the rows."""
    metrics = [m for m in METRICS if any(m in e for e in evaluations.values())]
    mean, sd, n = {}, {}, {}
    for label, runs in groups.items():
        values = {m: [float(evaluations[r][m]) for r in runs if r in evaluations
                      and evaluations[r].get(m) is not None and math.isfinite(float(evaluations[r][m]))]
                  for m in metrics}
        if not any(values.values()):
            continue
        mean[label] = {m: float(np.mean(v)) if v else np.nan for m, v in values.items()}
        sd[label] = {m: float(np.std(v, ddof=1)) if len(v) > 1 else np.nan for m, v in values.items()}
        n[label] = {m: len(v) for m, v in values.items()}
    frames = {k: pd.DataFrame.from_dict(v, orient="index", columns=metrics) for k, v in
              (("mean", mean), ("sd", sd), ("n", n))}
    best = pd.DataFrame(False, index=frames["mean"].index, columns=metrics)
    if len(best) > 1:
        for m in metrics:
            scores = frames["mean"][m].map(lambda v, m=m: _score(m, v) if pd.notna(v) else np.inf)
            if np.isfinite(scores.min()):
                best.loc[scores == scores.min(), m] = True
    frames["best"] = best
    return frames


def formatted(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """'0.123 ± 0.004 (n=3)' per cell, '★ ' before the best configuration's value; readable column names."""
    mean, sd, n, best = frames["mean"], frames["sd"], frames["n"], frames["best"]

    def cell(label, metric):
        value = mean.loc[label, metric]
        if pd.isna(value):
            return "—"
        text = f"{value:.3g}"
        if n.loc[label, metric] > 1:
            text += f" ± {sd.loc[label, metric]:.2g} (n={int(n.loc[label, metric])})"
        return ("★ " if best.loc[label, metric] else "") + text

    table = pd.DataFrame({metric_label(m): [cell(label, m) for label in mean.index] for m in mean.columns},
                         index=mean.index)
    table.index.name = "configuration"
    return table
