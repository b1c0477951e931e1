"""Evaluation of a trained run on its held-out cells, and training-stability figures.

- ``core.evaluation.metrics``: pure metric functions (arrays in, floats out) shared by the CLI and app.
- ``core.evaluation.stability``: ``stability_summary(metrics_df)`` from a run's metrics.jsonl.
- ``core.evaluation.evaluate``: ``evaluate_run(run_dir, ...)``, behind ``python -m core evaluate RUN``.

Importing this package does not import torch; the metric functions import it when called.
"""

from core.evaluation.metrics import (
    energy_distance,
    group_metrics,
    mean_errors,
    mean_shift,
    pearson,
    pearson_delta,
    top_k_overlap,
    velocity_agreement,
)
from core.evaluation.stability import loss_spikes, stability_summary

__all__ = [
    "energy_distance",
    "group_metrics",
    "loss_spikes",
    "mean_errors",
    "mean_shift",
    "pearson",
    "pearson_delta",
    "stability_summary",
    "top_k_overlap",
    "velocity_agreement",
]
