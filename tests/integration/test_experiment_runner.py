"""``run_experiment`` end to end on tiny runs (2 arms x 2 seeds of a 1-layer model, 2 steps each, in
parallel subprocesses): ordinary run folders, the same split for every arm of a seed, paired differences
that match the runs' own metrics.json files, and resuming that redoes only what is missing."""

import json

import pandas as pd
import pytest

from core.errors import ConfigError
from core.experiment.arms import parse_arms
from core.experiment.runner import ExperimentSpec, experiment_dir, run_experiment

pytestmark = pytest.mark.slow  # trains, or drives a real server: left out of the fast lane

TINY = ["training.max_steps=2", "training.batch_size=2", "training.accelerator=cpu", "model.kwargs.hidden_dim=16",
        "model.kwargs.n_layers=1", "model.kwargs.n_heads=2", "model.kwargs.cell_set_len=8",
        "data.kwargs.embed_key=X_pca", "data.kwargs.pert_col=condition", "data.kwargs.control_pert=sham",
        "data.kwargs.cell_type_key=cell_types_simple_short", "data.kwargs.batch_col=mouse_id",
        "data.kwargs.velocity_key=velocity_pca", "data.kwargs.confidence_key=velocity_confidence"]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, small_demo):
    root = tmp_path_factory.mktemp("experiment")
    data_path = root / "small_demo.h5ad"
    small_demo.write_h5ad(data_path)
    spec = ExperimentSpec("tiny", parse_arms("base,+mhc"), [0, 1], [f"data.kwargs.path={data_path}", *TINY])
    runs = root / "runs"
    messages = []
    results = run_experiment(spec, root=runs, jobs=2, log=messages.append)
    return spec, runs, results, messages


def test_every_arm_and_seed_is_an_evaluated_run_folder_with_the_seed_s_split(experiment):
    spec, runs, results, _ = experiment
    assert results["failed"] == [] and results["counts"]["trained"] == 4
    names = sorted(p.name for p in runs.iterdir() if p.is_dir() and p.name != "experiments")
    assert names == ["tiny.base.s0", "tiny.base.s1", "tiny.mhc.s0", "tiny.mhc.s1"]
    for name in names:
        assert json.loads((runs / name / "status.json").read_text())["state"] == "completed"
        assert (runs / name / "eval" / "metrics.json").is_file()
    splits = {name: pd.read_csv(runs / name / "split.csv") for name in names}
    for seed in (0, 1):
        assert splits[f"tiny.base.s{seed}"].equals(splits[f"tiny.mhc.s{seed}"])
    assert not splits["tiny.base.s0"].equals(splits["tiny.base.s1"])
    import yaml

    config = yaml.safe_load((runs / "tiny.mhc.s1" / "config.yaml").read_text())
    assert config["model"]["kwargs"]["use_mhc"] is True and config["training"]["seed"] == 1


def test_paired_differences_are_computed_from_the_runs_own_evaluations(experiment):
    spec, runs, results, _ = experiment
    folder = experiment_dir("tiny", runs)
    written = json.loads((folder / "results.json").read_text())
    assert (folder / "results.md").read_text().startswith("# Experiment tiny")
    for metric in ("energy_distance", "pearson_delta", "cos_delta_v"):
        by_run = {name: json.loads((runs / name / "eval" / "metrics.json").read_text())["overall"]["model"][metric]
                  for name in ("tiny.base.s0", "tiny.base.s1", "tiny.mhc.s0", "tiny.mhc.s1")}
        expected = [by_run[f"tiny.mhc.s{s}"] - by_run[f"tiny.base.s{s}"] for s in (0, 1)]
        row = next(c for c in written["comparisons"] if c["metric"] == metric)
        assert row["differences"] == pytest.approx(expected, rel=1e-9, abs=1e-12)
        assert row["verdict"].startswith(f"+mhc (vs base) changed {row['label']} by")


def test_rerunning_redoes_only_what_is_missing(experiment):
    spec, runs, _, _ = experiment
    again = run_experiment(spec, root=runs, jobs=2, log=lambda _: None)
    assert again["counts"] == {"skipped": 4, "trained": 0, "resumed": 0, "evaluated": 0, "failed": 0}
    (runs / "tiny.base.s1" / "eval" / "metrics.json").unlink()
    status_path = runs / "tiny.mhc.s0" / "status.json"
    status = json.loads(status_path.read_text())
    status_path.write_text(json.dumps({**status, "state": "cancelled"}))  # as a Ctrl-C would leave it
    resumed = run_experiment(spec, root=runs, jobs=2, log=lambda _: None)
    assert resumed["failed"] == []
    assert resumed["counts"] == {"skipped": 2, "trained": 0, "resumed": 1, "evaluated": 2, "failed": 0}
    assert json.loads(status_path.read_text())["state"] == "completed"


def test_an_existing_experiment_with_other_settings_is_refused(experiment):
    spec, runs, _, _ = experiment
    changed = ExperimentSpec("tiny", spec.arms, spec.seeds, [*spec.common, "training.learning_rate=0.01"])
    with pytest.raises(ConfigError, match="already exists with other settings"):
        run_experiment(changed, root=runs, log=lambda _: None)


def test_a_bad_override_is_one_line_before_anything_runs(tmp_path):
    spec = ExperimentSpec("bad", parse_arms("base,+mhc"), [0], ["model.kwargs.hidden_dimm=16"])
    with pytest.raises(ConfigError, match="arm base: unknown config key 'model.kwargs.hidden_dimm'"):
        run_experiment(spec, root=tmp_path, log=lambda _: None)
    assert not (tmp_path / "bad.base.s0").exists()


def test_the_python_api_resumes_the_same_experiment_and_returns_its_verdicts(experiment):
    import core

    spec, runs, results, _ = experiment
    table = core.run_experiment("base,+mhc", seeds=2, overrides=spec.common, name="tiny", demo_base=False,
                                root=runs, progress=False)
    again = table.attrs["results"]
    assert again["counts"]["skipped"] == 4 and again["counts"]["trained"] == 0  # nothing redone
    assert list(table["verdict"]) == [c["verdict"] for c in results["comparisons"]]
    assert table.attrs["folder"] == experiment_dir("tiny", runs)


def test_what_a_run_folder_still_needs_follows_its_recorded_state(tmp_path):
    import os

    from core.experiment.runner import Job, _job_needs
    from core.runs import RunWriter

    def folder(name, state, config=True, evaluated=None):
        path = tmp_path / name
        with RunWriter(path) as writer:
            writer.write_status(state, message="the loss became NaN at step 3" if state == "failed" else "")
        if config:
            (path / "config.yaml").write_text("training: {seed: 0}\n")
        if evaluated is not None:
            (path / "checkpoints").mkdir()
            (path / "checkpoints" / "final.ckpt").write_bytes(b"x")
            (path / "eval").mkdir()
            (path / "eval" / "metrics.json").write_text("{}")
            if not evaluated:  # an evaluation older than the checkpoint (the run was trained further)
                os.utime(path / "eval" / "metrics.json", (0, 0))
        return Job(parse_arms("base")[0], 0, name, [], path)

    assert _job_needs(Job(parse_arms("base")[0], 0, "absent", [], tmp_path / "absent")) == "train"
    assert _job_needs(folder("done", "completed", evaluated=True)) == "nothing"
    assert _job_needs(folder("stale", "completed", evaluated=False)) == "evaluate"
    assert _job_needs(folder("cancelled", "cancelled")) == "resume"
    assert _job_needs(folder("diverged", "failed")) == "failed"  # a result, not retried
    assert _job_needs(folder("never-started", "cancelled", config=False)) == "restart"


def test_a_failed_run_counts_as_an_outcome_of_its_arm(tmp_path):
    from types import SimpleNamespace

    from core.experiment.results import analyse

    arms = parse_arms("base,+mhc")
    spec = ExperimentSpec("x", arms, [0, 1], [])
    jobs = [SimpleNamespace(arm=arm, seed=seed, run_name=f"{arm.slug}{seed}", message="NaN",
                            state="failed" if (arm.name == "+mhc" and seed == 1) else "done",
                            run_dir=tmp_path / f"{arm.slug}{seed}") for arm in arms for seed in (0, 1)]
    results = analyse(spec, jobs)
    failed = next(c for c in results["comparisons"] if c["metric"] == "failed@state")
    assert failed["differences"] == [0.0, 1.0] and failed["arm_mean"] == 0.5 and failed["reference_mean"] == 0.0
    assert results["failed"] == ["mhc1: NaN"]
