"""An evaluation summary (eval/metrics.json) as one table: metrics down, methods across, the best entry
of each row marked, the real-vs-real floor beside them. The CLI prints it, the app shows it.

Columns: the model at its best checkpoint, the model at its final checkpoint (when that is another
checkpoint), every baseline, and the floor. "Best" compares the model (best checkpoint) with the baselines;
the final checkpoint is shown for honesty, not as a separate contender, and the floor is not a predictor.
"""

from __future__ import annotations

import math

from core.evaluation.baselines import FLOOR, PREDICTORS
from core.evaluation.heldout import HIGHER_IS_BETTER

SHOWN = (
    ("energy_distance", "energy distance"),
    ("pearson_delta", "Pearson delta"),
    ("mae_mean", "MAE of means"),
    ("mse_mean", "MSE of means"),
    ("top_k_overlap", "top-k overlap"),
    ("cos_delta_v", "cos(dz, v_z)"),
    ("cos_delta_true_v", "cos(dz, true v)"),
    ("magnitude_ratio", "|dz| / |v_z|"),
)
LABELS = {
    "model": "model",
    "final": "model (final)",
    "no_change": "no change",
    "global_mean_shift": "global shift",
    "train_mean_shift": "type shift",
    "gaussian_ot": "Gaussian OT",
    "train_burn_resample": "train burn",
    FLOOR: "real/real floor",
}
BEST_MARK = "*"


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def metric_rows(summary: dict, scope: str = "overall") -> tuple[list[str], list[dict]]:
    """(columns, rows) of ``summary[scope]`` (overall or all_cells): one row per metric with its label,
    which way is better, a value per column (None when undefined) and ``best`` (the best column)."""
    by_method = summary.get(scope, {})
    final = summary.get("final") or {}
    columns = ["model"]
    if not final.get("same_as_best", True) and final.get(scope, {}).get("model"):
        columns.append("final")
    columns += [m for m in (*PREDICTORS, FLOOR) if m in by_method]
    best = summary.get("best", {}) if scope == "overall" else {}
    rows = []
    for key, label in SHOWN:
        if key not in by_method.get("model", {}):
            continue
        if key == "cos_delta_true_v" and not _finite(by_method["model"][key]):
            continue  # only the demo knows its true velocity: no row of dashes elsewhere
        values = {}
        for column in columns:
            source = final.get(scope, {}).get("model", {}) if column == "final" else by_method.get(column, {})
            value = source.get(key)
            values[column] = value if _finite(value) else None
        better = "-" if key not in HIGHER_IS_BETTER else ("higher" if HIGHER_IS_BETTER[key] else "lower")
        rows.append({"metric": key, "label": label, "better": better, "values": values, "best": best.get(key)})
    return columns, rows


def format_table(summary: dict, scope: str = "overall") -> list[str]:
    """The table as aligned text lines; the best entry of each row ends with ``BEST_MARK``."""
    columns, rows = metric_rows(summary, scope)
    width = max(10, *(len(LABELS.get(c, c)) + 1 for c in columns))
    lines = [f"  {'metric':<16} {'better':>6} " + " ".join(f"{LABELS.get(c, c):>{width}}" for c in columns)]
    for row in rows:
        cells = []
        for column in columns:
            value = row["values"][column]
            text = "-" if value is None else f"{value:.4g}"
            cells.append(f"{text + (BEST_MARK if column == row['best'] else ''):>{width}}")
        lines.append(f"  {row['label']:<16} {row['better']:>6} " + " ".join(cells))
    return lines


def metric_frame(summary: dict, scope: str = "overall"):
    """The table as a pandas DataFrame (metrics as rows, method labels as columns) and, per row, the
    label of the best column (or None), for the app to highlight."""
    import pandas as pd

    columns, rows = metric_rows(summary, scope)
    frame = pd.DataFrame(
        [[row["values"][c] for c in columns] for row in rows],
        index=[row["label"] for row in rows],
        columns=[LABELS.get(c, c) for c in columns],
        dtype=float,
    )
    frame.insert(0, "better", [row["better"] for row in rows])
    best = [LABELS.get(row["best"], row["best"]) if row["best"] else None for row in rows]
    return frame, best


def unavailable_lines(summary: dict) -> list[str]:
    """One line per baseline that does not exist for some cell type, saying why."""
    lines = []
    for method, reasons in (summary.get("unavailable") or {}).items():
        for label, reason in reasons.items():
            lines.append(f"{LABELS.get(method, method)} does not exist for {label}: {reason}")
    return lines
