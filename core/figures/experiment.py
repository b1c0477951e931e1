"""Figures of an experiment (``core.experiment.results``): paired dot plots, one panel per metric.

In each panel every arm is a column of dots, one per seed, and a grey line joins the dots of the same seed
across an arm and its reference, so the eye reads the paired difference, not the spread between seeds.
The mean over seeds of the best baseline (dashed) and of the real-vs-real floor (dotted) are drawn across
the panel where the metric has them.
"""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.evaluation.baselines import FLOOR, PREDICTORS
from core.evaluation.table import LABELS
from core.figures.style import GREY, OKABE_ITO, apply_style, message_figure

DEFAULT_METRICS = ("energy_distance", "pearson_delta", "cos_delta_v", "energy_distance@final")


def _label(results: dict, metric: str) -> str:
    from core.experiment.results import METRICS, metric_id

    return next((label for k, s, label, _ in METRICS if metric_id(k, s) == metric), metric)


def _best_baseline(results: dict, metric: str) -> tuple[str, float] | None:
    from core.evaluation.heldout import HIGHER_IS_BETTER

    if metric not in HIGHER_IS_BETTER:
        return None
    means = {m: results["baselines"][m][metric]["mean"] for m in PREDICTORS if m in results["baselines"]}
    finite = {m: v for m, v in means.items() if v is not None and math.isfinite(v)}
    if not finite:
        return None
    method = (max if HIGHER_IS_BETTER[metric] else min)(finite, key=finite.get)
    return LABELS.get(method, method), finite[method]


def paired_dots(results: dict, metrics=DEFAULT_METRICS) -> go.Figure:
    """One panel per metric: arms across, a dot per seed, seeds joined between each arm and its reference."""
    arms = [a["name"] for a in results["spec"]["arms"]]
    references = {a["name"]: a["reference"] for a in results["spec"]["arms"]}
    records = {(r["arm"], r["seed"]): r for r in results["records"]}
    seeds = results["spec"]["seeds"]
    metrics = [m for m in metrics if any(r["metrics"].get(m) is not None for r in results["records"])]
    if not metrics:
        return message_figure("No evaluated run yet: the paired dot plots appear once runs are evaluated.",
                              title="Paired differences per seed")
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[_label(results, m) for m in metrics])
    colours = {seed: OKABE_ITO[i % len(OKABE_ITO)] for i, seed in enumerate(seeds)}
    for col, metric in enumerate(metrics, start=1):
        def value(arm, seed, metric=metric):
            record = records.get((arm, seed))
            return None if record is None else record["metrics"].get(metric)

        for arm, reference in references.items():
            if not reference:
                continue
            for seed in seeds:
                pair = (value(reference, seed), value(arm, seed))
                if None in pair:
                    continue
                fig.add_trace(go.Scatter(x=[reference, arm], y=list(pair), mode="lines", hoverinfo="skip",
                                         line=dict(color=GREY, width=1), showlegend=False), row=1, col=col)
        for seed in seeds:
            points = [(arm, value(arm, seed)) for arm in arms if value(arm, seed) is not None]
            fig.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="markers",
                                     marker=dict(color=colours[seed], size=9), name=f"seed {seed}",
                                     legendgroup=f"seed {seed}", showlegend=col == 1), row=1, col=col)
        best = _best_baseline(results, metric)
        if best is not None:
            fig.add_hline(y=best[1], line=dict(color="black", dash="dash", width=1), row=1, col=col,
                          annotation_text=f"best baseline: {best[0]}", annotation_position="top left")
        floor = results["baselines"].get(FLOOR, {}).get(metric, {}).get("mean")
        if floor is not None and math.isfinite(floor):
            fig.add_hline(y=floor, line=dict(color=GREY, dash="dot", width=1), row=1, col=col,
                          annotation_text="real/real floor", annotation_position="bottom left")
        fig.update_xaxes(type="category", categoryorder="array", categoryarray=arms, row=1, col=col)
    return apply_style(fig, title=f"Experiment {results['spec']['name']}: each seed's runs, paired", height=420)
