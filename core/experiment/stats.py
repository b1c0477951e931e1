"""Paired differences between two arms of an experiment, over seeds, and a one-line verdict.

Arm and reference ran with the same seeds, hence the same splits, initial weights and sets, so the seed is
the pairing unit: d_s = metric(arm, seed s) - metric(reference, seed s) for the k seeds where both are defined.

    mean  = sum_s d_s / k
    sd    = sqrt(sum_s (d_s - mean)^2 / (k - 1))
    95% CI = mean -/+ t_{0.975, k-1} sd / sqrt(k)          (Student's t; equals scipy's ttest_rel interval)

The verdict says "no detectable effect" when the interval contains 0, and otherwise which way the metric moved
and whether that is better or worse. With one seed there is no interval and the verdict says so.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

CONFIDENCE = 0.95


@dataclass
class PairedDifference:
    n: int  # seeds with both values
    mean: float
    sd: float
    ci_low: float
    ci_high: float
    arm_mean: float
    reference_mean: float
    differences: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


def t_quantile(probability: float, dof: int) -> float:
    """The Student t quantile (scipy.stats.t.ppf)."""
    from scipy.stats import t

    return float(t.ppf(probability, dof))


def paired_difference(arm_values, reference_values, confidence: float = CONFIDENCE) -> PairedDifference:
    """The paired difference arm - reference over seeds (same order); a pair with a NaN or None is left out."""
    arm = np.asarray([math.nan if v is None else v for v in arm_values], dtype=np.float64)
    ref = np.asarray([math.nan if v is None else v for v in reference_values], dtype=np.float64)
    if arm.shape != ref.shape:
        raise ValueError(f"arm and reference need one value per seed each; got {arm.shape} and {ref.shape}")
    both = np.isfinite(arm) & np.isfinite(ref)
    d = arm[both] - ref[both]
    n = int(d.size)
    nan = math.nan
    if n == 0:
        return PairedDifference(0, nan, nan, nan, nan, nan, nan, [])
    mean = float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else nan
    if n > 1:
        half = t_quantile((1 + confidence) / 2, n - 1) * sd / math.sqrt(n)
        low, high = mean - half, mean + half
    else:
        low = high = nan
    return PairedDifference(n, mean, sd, low, high, float(arm[both].mean()), float(ref[both].mean()), d.tolist())


def _num(value: float) -> str:
    # Two significant digits with a real minus sign: differences are read, not parsed.
    return f"{value:.2g}".replace("-", "\N{MINUS SIGN}")


def verdict(arm: str, reference: str, label: str, diff: PairedDifference, higher_is_better: bool | None,
            confidence: float = CONFIDENCE) -> str:
    """E.g. "+mhc changed held-out ED by −0.0004 ± 0.0003 (3 seeds, 95% CI −0.001…0.0003): no detectable effect"."""
    head = f"{arm} (vs {reference}) changed {label}"
    if diff.n == 0:
        return f"{head}: not measured (no seed has both values)"
    if diff.n == 1:
        return f"{head} by {_num(diff.mean)} (1 seed): no interval from one seed; run more seeds"
    level = f"{round(confidence * 100)}%"
    body = (f"{head} by {_num(diff.mean)} ± {_num(diff.sd)} ({diff.n} seeds, {level} CI "
            f"{_num(diff.ci_low)}…{_num(diff.ci_high)})")
    if diff.ci_low <= 0 <= diff.ci_high or not math.isfinite(diff.ci_low):
        return f"{body}: no detectable effect"
    direction = "higher" if diff.mean > 0 else "lower"
    if higher_is_better is None:
        return f"{body}: {direction}"
    better = (diff.mean > 0) == higher_is_better
    return f"{body}: {direction}, {'better' if better else 'worse'}"
