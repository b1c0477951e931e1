"""Paired differences and verdicts against scipy's paired t test, the arms and their presets, and the
results table and figure built from hand-made records (no training here)."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.stats

from core.errors import ConfigError
from core.experiment.arms import LR_LADDER, parse_arms
from core.experiment.results import analyse, best_entries, markdown
from core.experiment.runner import ExperimentSpec
from core.experiment.stats import paired_difference, t_quantile, verdict


def test_t_quantile_matches_the_closed_forms_for_one_and_two_degrees_of_freedom():
    p = 0.975
    assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-12)  # Cauchy: 12.706
    assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-12)  # 4.3027


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paired_interval_equals_scipy_ttest_rel(seed):
    rng = np.random.default_rng(seed)
    reference = rng.normal(1.0, 0.2, size=3 + seed)
    arm = reference + rng.normal(-0.05, 0.03, size=reference.size)
    diff = paired_difference(arm, reference)
    interval = scipy.stats.ttest_rel(arm, reference).confidence_interval(0.95)
    assert diff.n == reference.size
    assert diff.mean == pytest.approx(np.mean(arm - reference), rel=1e-12)
    assert diff.sd == pytest.approx(np.std(arm - reference, ddof=1), rel=1e-12)
    assert (diff.ci_low, diff.ci_high) == pytest.approx((interval.low, interval.high), rel=1e-10)


def test_pairs_with_a_missing_value_are_left_out():
    diff = paired_difference([1.0, None, 3.0, float("nan")], [0.5, 2.0, 2.0, 1.0])
    assert diff.n == 2 and diff.differences == [0.5, 1.0] and diff.mean == pytest.approx(0.75)
    assert diff.arm_mean == pytest.approx(2.0) and diff.reference_mean == pytest.approx(1.25)
    one = paired_difference([1.0], [0.0])
    assert one.n == 1 and math.isnan(one.sd) and math.isnan(one.ci_low)


def test_verdict_of_the_issue_example_is_no_detectable_effect():
    # d = -0.0001, -0.0004, -0.0007: mean -0.0004, sd 0.0003, half-width 4.3027 * 0.0003 / sqrt(3) = 0.000745
    reference = np.array([0.1330, 0.1200, 0.1450])
    diff = paired_difference(reference + [-0.0001, -0.0004, -0.0007], reference)
    text = verdict("+mhc", "base", "held-out ED", diff, higher_is_better=False)
    assert text.startswith("+mhc (vs base) changed held-out ED by −0.0004 ± 0.0003 (3 seeds, 95% CI −0.0011…")
    assert text.endswith("): no detectable effect")
    assert diff.ci_high == pytest.approx(-0.0004 + 4.302652729911275 * 0.0003 / math.sqrt(3), abs=1e-9)


def test_verdict_says_which_way_and_whether_that_is_better():
    diff = paired_difference([0.9, 1.0, 1.1], [2.0, 2.05, 2.2])
    assert verdict("+mhc", "base", "held-out ED", diff, higher_is_better=False).endswith(": lower, better")
    assert verdict("+mhc", "base", "Pearson delta", diff, higher_is_better=True).endswith(": lower, worse")
    assert verdict("+mhc", "base", "grad-norm p95", diff, higher_is_better=None).endswith(": lower")
    single = verdict("+mhc", "base", "held-out ED", paired_difference([1.0], [2.0]), False)
    assert "(1 seed): no interval" in single


def test_named_arms_take_the_first_as_reference_and_stability_pairs_each_lr():
    base, mhc = parse_arms("base,+mhc")
    assert base.reference is None and mhc.reference == "base"
    assert mhc.overrides == ("model.kwargs.use_mhc=true",) and mhc.slug == "mhc"
    assert parse_arms("+mhc+velocity")[0].slug == "mhc-velocity"
    ladder = parse_arms("stability")
    assert len(ladder) == 2 * len(LR_LADDER)
    for plain, wrapped in zip(ladder[::2], ladder[1::2]):
        assert plain.reference is None and wrapped.reference == plain.name
        assert plain.overrides[-1] == wrapped.overrides[-1]  # the same learning rate
    custom = parse_arms("base", [["beta0", "model.kwargs.velocity_beta=0"]])
    assert custom[1].reference == "base" and custom[1].overrides == ("model.kwargs.velocity_beta=0",)


@pytest.mark.parametrize("text, custom, message", [
    ("base,+mhcc", None, "unknown arm '\\+mhcc'"),
    ("base,base", None, "must be distinct"),
    ("base", [["lr", "training.lr"]], "give a name, then key=value"),
    ("", None, "no arms"),
])
def test_bad_arms_are_refused_in_one_line(text, custom, message):
    with pytest.raises(ConfigError, match=message):
        parse_arms(text, custom)


def fake_results(tmp_path, ed_base, ed_mhc, baseline_ed=0.07):
    """analyse() over hand-made eval/metrics.json files of 2 arms x len(ed_base) seeds."""
    import json

    arms = parse_arms("base,+mhc")
    spec = ExperimentSpec("fake", arms, list(range(len(ed_base))), [])
    jobs = []
    for arm, values in zip(arms, (ed_base, ed_mhc)):
        for seed, ed in enumerate(values):
            folder = tmp_path / f"{arm.slug}{seed}"
            (folder / "eval").mkdir(parents=True)
            summary = {"overall": {"model": {"energy_distance": ed, "pearson_delta": 0.9},
                                   "gaussian_ot": {"energy_distance": baseline_ed + seed / 100},
                                   "real_split_half": {"energy_distance": 0.05}},
                       "final": {"same_as_best": True}, "stability": {"loss_spikes": 0},
                       "design": {"description": "held-out mice"}}
            (folder / "eval" / "metrics.json").write_text(json.dumps(summary))
            jobs.append(SimpleNamespace(arm=arm, seed=seed, run_name=folder.name, state="done", message="",
                                        run_dir=folder))
    return analyse(spec, jobs)


def test_results_pair_by_seed_and_mark_a_baseline_that_beats_every_arm(tmp_path):
    results = fake_results(tmp_path, [0.13, 0.12, 0.15], [0.1296, 0.1196, 0.1493])
    ed = next(c for c in results["comparisons"] if c["metric"] == "energy_distance")
    assert ed["differences"] == pytest.approx([-0.0004, -0.0004, -0.0007])
    final = next(c for c in results["comparisons"] if c["metric"] == "energy_distance@final")
    assert final["mean"] == pytest.approx(ed["mean"])  # final is the best checkpoint here
    assert results["baselines"]["gaussian_ot"]["energy_distance"]["mean"] == pytest.approx(0.08)
    assert best_entries(results)["energy_distance"] == "Gaussian OT"  # 0.08 beats both arms' 0.13
    text = markdown(results)
    assert "| +mhc | base | held-out ED |" in text and "design: held-out mice" in text
    assert "| Gaussian OT | 0.08 ± 0.01* |" in text
    assert "real/real floor | 0.05" in text


def test_paired_dot_plot_joins_each_seed_between_arm_and_reference(tmp_path):
    from core.figures.experiment import paired_dots

    results = fake_results(tmp_path, [0.13, 0.12], [0.11, 0.125])
    fig = paired_dots(results, metrics=("energy_distance",))
    lines = [t for t in fig.data if t.mode == "lines"]
    assert [list(t.y) for t in lines] == [[0.13, 0.11], [0.12, 0.125]]
    assert all(list(t.x) == ["base", "+mhc"] for t in lines)
    dots = [t for t in fig.data if t.mode == "markers"]
    assert [t.name for t in dots] == ["seed 0", "seed 1"] and list(dots[0].y) == [0.13, 0.11]
    notes = [a.text for a in fig.layout.annotations]
    assert "best baseline: Gaussian OT" in notes and "real/real floor" in notes


def test_default_name_comes_from_the_arms_so_the_same_command_resumes():
    from core.experiment.arms import default_name

    assert default_name(parse_arms("base,+mhc")) == "base-vs-mhc"
    assert default_name(parse_arms("base,+mhc+velocity")) == "base-vs-mhc-velocity"
    assert default_name(parse_arms("stability")) == "stability"


@pytest.mark.parametrize("argv, message", [
    (["--arms", "base,+mhcc"], "error: unknown arm '+mhcc'"),
    (["--seeds", "0"], "error: --seeds must be between 1 and 100; got 0"),
    (["--arm", "lr", "training.lr"], "error: --arm lr training.lr: give a name, then key=value overrides"),
])
def test_cli_refuses_bad_arms_and_seeds_in_one_line(argv, message, capsys, tmp_path, monkeypatch):
    from core.__main__ import main

    monkeypatch.setenv("ST_RUNS_DIR", str(tmp_path))
    assert main(["experiment", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message)
    assert list(tmp_path.iterdir()) == []  # nothing was written
