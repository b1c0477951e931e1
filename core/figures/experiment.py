"""Figures of an experiment (``core.experiment.results``): paired dot plots, one panel per metric, and held-out ED
against cos(dz, v_z) over the velocity weight λ (``ed_against_velocity``).

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


def ed_against_velocity(results: dict, x_metric: str = "cos_delta_v", y_metric: str = "energy_distance") -> go.Figure:
    """Held-out ED (y) against cos(dz, v_z) (x), one point per arm at its mean over seeds (error bars: sd over
    seeds), with each seed's run as a faint dot and the arms joined in order of their velocity weight lambda
    (``results["velocity_weight"]``), so a lambda ladder reads as a curve: what ED costs for how much
    alignment. The baselines are marked where both metrics exist for them; the real-vs-real floor's ED is a
    dotted line (it has no dz, hence no cosine)."""
    weights = results.get("velocity_weight") or {}
    arms = sorted((a["name"] for a in results["spec"]["arms"]), key=lambda name: (weights.get(name, 0.0), name))
    points = []
    for arm in arms:
        x, y = results["arms"][arm].get(x_metric, {}), results["arms"][arm].get(y_metric, {})
        if x.get("mean") is not None and y.get("mean") is not None:
            points.append((arm, x, y))
    if not points:
        return message_figure("No evaluated run with both held-out ED and cos(dz, v_z) yet (velocity metrics need "
                              "a velocity in the data).", title="Held-out ED against cos(dz, v_z)")
    fig = go.Figure()
    records = [r for r in results["records"] if r["metrics"].get(x_metric) is not None
               and r["metrics"].get(y_metric) is not None]
    fig.add_trace(go.Scatter(x=[r["metrics"][x_metric] for r in records], y=[r["metrics"][y_metric] for r in records],
                             mode="markers", marker=dict(color=GREY, size=6, opacity=0.6), name="one seed's run",
                             text=[f"{r['arm']}, seed {r['seed']}" for r in records], hoverinfo="text+x+y"))
    fig.add_trace(go.Scatter(
        x=[x["mean"] for _, x, _ in points], y=[y["mean"] for _, _, y in points], mode="lines+markers+text",
        line=dict(color=OKABE_ITO[0]), marker=dict(size=11, color=OKABE_ITO[0]),
        error_x=dict(array=[x["sd"] or 0.0 for _, x, _ in points]),
        error_y=dict(array=[y["sd"] or 0.0 for _, _, y in points]),
        text=[f"{arm} (λ={weights.get(arm, 0.0):g})" for arm, _, _ in points], textposition="top center",
        name="arm: mean ± sd over seeds"))
    for i, method in enumerate(PREDICTORS):
        stats = results["baselines"].get(method, {})
        x, y = (stats.get(x_metric) or {}).get("mean"), (stats.get(y_metric) or {}).get("mean")
        if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
            continue
        fig.add_trace(go.Scatter(x=[x], y=[y], mode="markers+text", text=[LABELS.get(method, method)],
                                 textposition="bottom center", name=f"baseline: {LABELS.get(method, method)}",
                                 marker=dict(symbol="x", size=11, color=OKABE_ITO[(i + 1) % len(OKABE_ITO)])))
    floor = (results["baselines"].get(FLOOR, {}).get(y_metric) or {}).get("mean")
    if floor is not None and math.isfinite(floor):
        fig.add_hline(y=floor, line=dict(color=GREY, dash="dot", width=1), annotation_text="real/real floor (ED)",
                      annotation_position="bottom right")
    fig.update_xaxes(title_text=_label(results, x_metric) + " (higher: more aligned)")
    fig.update_yaxes(title_text=_label(results, y_metric) + " (lower: closer to the real burn cells)")
    return apply_style(fig, title=f"Experiment {results['spec']['name']}: held-out ED against cos(dz, v_z) over λ",
                       height=480)


def experiment_figures(results: dict) -> dict[str, go.Figure]:
    """The figures of an experiment by the names their files get (``python -m core experiment`` writes them)."""
    return {"paired_dots": paired_dots(results), "ed_against_cos": ed_against_velocity(results)}
