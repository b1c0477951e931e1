"""Runs are shown from their settings: every run folder holds its resolved config from the start, so a CLI
run and an app run with the same settings are seeds of one configuration, a failed run shows what it was
asked to do, a velocity run says velocity is on before it has logged anything, and from-scratch runs do
not claim LoRA."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import yaml
from streamlit.testing.v1 import AppTest
from support import wait_until

from core.runs import RunWriter, list_runs, read_config, read_status

APP = "../../app/main.py"
TERMINAL = ("completed", "failed", "cancelled", "interrupted")


def poll(predicate, timeout: float = 600.0):
    wait_until(predicate, timeout, poll=0.5, what="the run")


@pytest.fixture
def runs_root(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    monkeypatch.setenv("ST_RUNS_DIR", str(root))
    logging.getLogger("app").disabled = True
    return root


def new_app():
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    assert not at.exception
    return at


@pytest.mark.slow
def test_compare_groups_a_cli_run_and_an_app_run_with_the_same_settings_as_seeds(runs_root):
    from core.__main__ import main

    # the app's Launch with its defaults but seed 1; STOP at once, so the trainer ends after preparing data
    at = new_app()
    at.switch_page("views/train.py").run()
    at.number_input(key="tf_seed").set_value(1)
    next(b for b in at.button if b.label == "Launch").click().run()
    assert not at.exception and not at.error
    app_run = runs_root / at.session_state["selected_run"]
    (app_run / "STOP").write_text("stop after preparing data\n")
    # the README's CLI fine-tune, same STOP
    cli_run = runs_root / "cli-run"
    cli_run.mkdir(parents=True)
    (cli_run / "STOP").write_text("stop after preparing data\n")
    assert main(["train", "model.init_from=demo", f"run.dir={cli_run}", "run.name=cli-run"]) == 0
    poll(lambda: read_status(app_run)["state"] in TERMINAL)
    assert read_status(app_run)["state"] == read_status(cli_run)["state"] == "cancelled"

    cli_config, app_config = read_config(cli_run), read_config(app_run)
    assert cli_config["training"]["max_epochs"] == app_config["training"]["max_epochs"] == 5
    assert cli_config["data"]["kwargs"]["pert_col"] == app_config["data"]["kwargs"]["pert_col"] == "condition"

    at.switch_page("views/compare.py").run()
    at.multiselect(key="compare_runs").set_value([app_run.name, "cli-run"]).run()
    assert not at.exception
    assert not any("single seed" in c.value for c in at.caption)
    table = next(t.value for t in at.dataframe if "state" in t.value.columns)
    assert set(table.columns) == {"state", "training.seed"}  # nothing but the seed differs


def chart_texts(at) -> list[str]:
    """The annotation texts of every chart on the page (a message figure says why it is empty)."""
    return [a.get("text", "") for c in at.get("plotly_chart")
            for a in json.loads(c.proto.spec)["layout"].get("annotations", [])]


def write_run(root: Path, name: str, config: dict, state: str, message: str = "", steps: int = 0) -> Path:
    path = root / name
    with RunWriter(path) as writer:
        writer.write_status("running", total_steps=steps or None)
        for step in range(steps):
            writer.append_metrics({"split": "train", "step": step, "epoch": 0, "loss": 1.0 / (step + 1),
                                   "cos_similarity": float(np.cos(step)), "grad_norm": 1.0})
        writer.write_status(state, message=message)
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    return path


VELOCITY_ON = {"model": {"init_from": "demo", "kwargs": {"use_velocity_alignment": True, "use_mhc": False,
                                                        "lora": {"enable": True}}},
               "training": {"seed": 0, "max_epochs": 5, "learning_rate": 0.5}, "run": {"name": "vel"}}
SCRATCH = {"model": {"init_from": None, "kwargs": {"use_velocity_alignment": False, "use_mhc": True,
                                                   "lora": {"enable": True}}},
           "training": {"seed": 3, "max_epochs": 5}, "run": {"name": "scratch"}}


@pytest.fixture
def shown_runs(runs_root):
    write_run(runs_root, "vel-failed", VELOCITY_ON, "failed", "cell type 'x' has no control cells")
    write_run(runs_root, "scratch", SCRATCH, "completed", steps=85)
    return runs_root


def test_a_velocity_run_that_failed_early_says_velocity_was_on_and_shows_its_settings(shown_runs):
    at = new_app()
    at.session_state["selected_run"] = "vel-failed"
    at.switch_page("views/train.py").run()
    assert not at.exception
    texts = chart_texts(at)
    assert "Velocity alignment is on; no λ_t logged yet." in texts
    assert not any("Velocity alignment is off" in t for t in texts)
    settings = next(t.value for t in at.dataframe if "value" in t.value.columns)
    assert settings.loc["model.kwargs.use_velocity_alignment", "value"] == "True"
    assert settings.loc["training.learning_rate", "value"] == "0.5"
    runs = next(t.value for t in at.dataframe if "progress" in t.value.columns)
    assert runs.loc["vel-failed", "step"] == "not started"
    assert bool(runs.loc["vel-failed", "LoRA"]) and bool(runs.loc["vel-failed", "velocity"])


def test_a_from_scratch_run_does_not_show_lora_and_smooths_for_its_length(shown_runs):
    at = new_app()
    at.session_state["selected_run"] = "scratch"
    at.switch_page("views/train.py").run()
    runs = next(t.value for t in at.dataframe if "progress" in t.value.columns)
    assert not runs.loc["scratch", "LoRA"]
    assert runs.loc["scratch", "step"].endswith("/85")
    smoothing = next(s for s in at.slider if s.label.startswith("Smoothing"))
    assert smoothing.value == pytest.approx(1 - 20 / 85, abs=0.01)  # time constant ~5% of 85 steps, not 0.9
    assert "Velocity alignment is off in this run (no λ_t)." in chart_texts(at)


def test_compare_draws_cosines_on_a_linear_axis_and_losses_on_a_log_axis(shown_runs):
    at = new_app()
    at.switch_page("views/compare.py").run()
    at.multiselect(key="compare_runs").set_value(["scratch"]).run()
    at.selectbox(key="compare_column").set_value("loss").run()
    assert next(t for t in at.toggle if t.label == "Log y").value is True
    at.selectbox(key="compare_column").set_value("cos_similarity").run()
    assert next(t for t in at.toggle if t.label == "Log y").value is False


def test_a_run_that_fails_while_loading_data_keeps_its_resolved_settings(runs_root, tmp_path):
    from core.__main__ import main

    run_dir = runs_root / "bad-path"
    missing = tmp_path / "missing.h5ad"
    assert main(["train", f"data.kwargs.path={missing}", f"run.dir={run_dir}", "model.kwargs.use_mhc=true"]) == 2
    assert read_status(run_dir)["state"] == "failed"
    config = read_config(run_dir)
    assert config["model"]["kwargs"]["use_mhc"] is True and config["training"]["max_epochs"] == 5
    assert [r["config"]["model.kwargs.use_mhc"] for r in list_runs(runs_root)] == [True]
