"""The experiment's ED-against-cos(dz, v_z) figure over the velocity weight λ: the plotted points are the arms'
means over seeds of their runs' own eval/metrics.json, ordered by λ, with the baselines where they were scored."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from core.experiment.arms import LAMBDA_LADDER, parse_arms
from core.experiment.results import analyse
from core.experiment.runner import ExperimentSpec
from core.figures.experiment import ed_against_velocity, experiment_figures

# per (arm, seed): (held-out ED, cos(dz, v_z)); made up but distinct, so a mix-up shows
VALUES = {("base", 0): (0.50, 0.10), ("base", 1): (0.54, 0.12),
          ("+velocity@lambda=0.03", 0): (0.51, 0.15), ("+velocity@lambda=0.03", 1): (0.53, 0.17),
          ("+velocity@lambda=0.1", 0): (0.55, 0.22), ("+velocity@lambda=0.1", 1): (0.57, 0.26),
          ("+velocity@lambda=0.3", 0): (0.61, 0.30), ("+velocity@lambda=0.3", 1): (0.65, 0.34),
          ("+velocity@lambda=1", 0): (0.80, 0.41), ("+velocity@lambda=1", 1): (0.90, 0.45)}
BASELINES = {"gaussian_ot": (0.45, 0.05), "train_mean_shift": (0.70, 0.20), "no_change": (1.2, None)}


def _metrics(ed, cos, seed):
    overall = {"model": {"energy_distance": ed, "cos_delta_v": cos},
               "real_split_half": {"energy_distance": 0.30 + seed * 0.02, "cos_delta_v": None}}
    for method, (b_ed, b_cos) in BASELINES.items():
        overall[method] = {"energy_distance": b_ed + seed * 0.01, "cos_delta_v": b_cos}
    return {"overall": overall, "final": {"same_as_best": True}, "design": {"description": "held-out mice"}}


@pytest.fixture
def results(tmp_path):
    arms = parse_arms("lambda")
    spec = ExperimentSpec("lam", arms, [0, 1], ["model.init_from=demo"])
    jobs = []
    for arm in arms:
        for seed in (0, 1):
            run_dir = tmp_path / f"{arm.slug}{seed}"
            (run_dir / "eval").mkdir(parents=True)
            (run_dir / "eval" / "metrics.json").write_text(json.dumps(_metrics(*VALUES[(arm.name, seed)], seed)))
            jobs.append(SimpleNamespace(arm=arm, seed=seed, run_name=run_dir.name, state="done", message="",
                                        run_dir=run_dir))
    return analyse(spec, jobs)


def test_the_lambda_preset_is_base_then_velocity_at_each_weight(results):
    arms = parse_arms("lambda")
    assert [a.name for a in arms] == ["base", *(f"+velocity@lambda={lam:g}" for lam in LAMBDA_LADDER)]
    assert all(a.reference == "base" for a in arms[1:])
    assert results["velocity_weight"] == {"base": 0.0, **{f"+velocity@lambda={lam:g}": lam for lam in LAMBDA_LADDER}}


def test_arm_points_are_the_means_over_seeds_in_order_of_lambda(results):
    fig = ed_against_velocity(results)
    arms_trace = next(t for t in fig.data if t.name == "arm: mean ± sd over seeds")
    order = ["base", *(f"+velocity@lambda={lam:g}" for lam in LAMBDA_LADDER)]
    assert list(arms_trace.x) == pytest.approx([np.mean([VALUES[(a, s)][1] for s in (0, 1)]) for a in order])
    assert list(arms_trace.y) == pytest.approx([np.mean([VALUES[(a, s)][0] for s in (0, 1)]) for a in order])
    assert list(arms_trace.error_y.array) == pytest.approx(
        [np.std([VALUES[(a, s)][0] for s in (0, 1)], ddof=1) for a in order])
    assert arms_trace.text[-1] == "+velocity@lambda=1 (λ=1)"
    seeds_trace = next(t for t in fig.data if t.name == "one seed's run")
    assert sorted(zip(seeds_trace.x, seeds_trace.y)) == sorted((c, e) for e, c in VALUES.values())


def test_baselines_with_both_metrics_are_marked_and_the_floor_is_a_line(results):
    fig = ed_against_velocity(results)
    marked = {t.name: (t.x[0], t.y[0]) for t in fig.data if t.name.startswith("baseline: ")}
    # seeds 0 and 1 add 0 and 0.01 to a baseline's ED: the mean adds 0.005; no change has no cosine
    assert marked == {"baseline: Gaussian OT": pytest.approx((0.05, 0.455)),
                      "baseline: type shift": pytest.approx((0.20, 0.705))}
    floor = [shape for shape in fig.layout.shapes if shape.line.dash == "dot"]
    assert len(floor) == 1 and floor[0].y0 == pytest.approx(0.31)
    assert set(experiment_figures(results)) == {"paired_dots", "ed_against_cos"}


def test_without_velocity_metrics_the_figure_says_so(results):
    for record in results["records"]:
        record["metrics"]["cos_delta_v"] = None
    for stats in results["arms"].values():
        stats["cos_delta_v"] = {"n": 0, "mean": None, "sd": None}
    fig = ed_against_velocity(results)
    assert "No evaluated run" in fig.layout.annotations[0].text
