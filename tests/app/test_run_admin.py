"""Looking after runs from the app and the CLI: tags, delete (never a running run), clone with changes
(the same settings but the changes), and warnings about how a run was set up or went."""

import logging
import time

import numpy as np
import pandas as pd
import pytest
import yaml
from streamlit.testing.v1 import AppTest
from support import unescaped

from core.config import load_config, save_config
from core.errors import ConfigError
from core.evaluation.run_warnings import run_warnings
from core.figures.compare import flatten
from core.runs import RunFolderError, RunWriter, read_config, read_status
from core.runs.admin import clone_overrides, delete_run, read_tags, set_tags
from core.training.data import DEMO_MAPPINGS
from core.training.run import resolve_defaults

pytestmark = pytest.mark.slow  # trains, or drives a real server: left out of the fast lane

APP = "../../app/main.py"


def finished_run(root, name, overrides=(), state="completed", steps=30):
    path = root / name
    with RunWriter(path) as writer:
        writer.write_status("running", total_steps=steps)
        for step in range(steps):
            writer.append_metrics({"split": "train", "step": step, "epoch": 0, "loss": 1.0})
        writer.write_status(state)
    # the data keys as the trainer resolves them for the demo, so the folder looks like a real run's
    data = [f"data.kwargs.{k}={v}" for k, v in DEMO_MAPPINGS["burn_sham"].to_dict().items() if v]
    cfg = resolve_defaults(load_config(overrides=["model.init_from=demo", f"run.name={name}", *data, *overrides]))
    save_config(cfg, path / "config.yaml")
    return path


def test_a_clone_has_the_sources_settings_but_the_changes(tmp_path):
    source = finished_run(tmp_path, "src", ["model.kwargs.use_mhc=true", "model.kwargs.mhc.layer_indices=[0,2]",
                                            "data.kwargs.control_pert='yes'", "training.learning_rate=0.0005"])
    cloned = load_config(overrides=clone_overrides(source, ["training.seed=7"]))
    before, after = flatten(read_config(source)), flatten(cloned.to_dict())
    differ = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert differ == {"training.seed", "run.name"}
    assert after["data.kwargs.control_pert"] == "yes" and after["model.kwargs.mhc.layer_indices"] == (0, 2)
    with pytest.raises(ConfigError, match="training.sed"):
        clone_overrides(source, ["training.sed=7"])


def test_tags_are_kept_in_order_without_duplicates_and_checked(tmp_path):
    run = finished_run(tmp_path, "r")
    assert set_tags(run, ["baseline", " best so far ", "baseline", ""]) == ["baseline", "best so far"]
    assert read_tags(run) == ["baseline", "best so far"]
    with pytest.raises(ConfigError, match="tag"):
        set_tags(run, ["**bold**"])
    assert read_tags(run) == ["baseline", "best so far"]


def test_a_running_run_is_never_deleted(tmp_path):
    running = tmp_path / "busy"
    with RunWriter(running, heartbeat_interval=3600) as writer:
        writer.write_status("running", total_steps=10)
        writer.heartbeat(force=True)
        with pytest.raises(RunFolderError, match="still running"):
            delete_run(running)
    assert running.is_dir()
    done = finished_run(tmp_path, "done")
    delete_run(done)
    assert not done.exists()


def test_the_cli_tags_and_deletes_inside_the_runs_folder_only(tmp_path, capsys):
    from core.__main__ import main

    finished_run(tmp_path, "r1")
    assert main(["runs", "--root", str(tmp_path), "tag", "r1", "baseline", "v2"]) == 0
    assert read_tags(tmp_path / "r1") == ["baseline", "v2"]
    outside = finished_run(tmp_path / "elsewhere", "other")
    assert main(["runs", "--root", str(tmp_path / "sub"), "delete", str(outside)]) == 2
    assert outside.is_dir()
    assert main(["runs", "--root", str(tmp_path), "delete", "r1"]) == 0
    assert not (tmp_path / "r1").exists()


def test_warnings_for_a_long_warm_up_a_short_run_and_a_train_val_gap():
    config = {"model.kwargs.use_velocity_alignment": True, "model.kwargs.velocity_warmup_steps": 50}
    steps = np.arange(12)
    metrics = pd.concat([pd.DataFrame({"split": "train", "step": steps, "loss": 0.2}),
                         pd.DataFrame({"split": "val", "step": [11], "val_loss": [0.5]})], ignore_index=True)
    warnings = run_warnings(config, {"total_steps": 12}, metrics)
    assert any("warm-up (50 steps) is not shorter than the run (12 steps): λ_t only reaches 0.24" in w
               for w in warnings)
    assert any("only 12 training steps" in w for w in warnings)
    assert any("validation loss (0.5) is 2.5× the training loss (0.2)" in w for w in warnings)
    fine = pd.concat([pd.DataFrame({"split": "train", "step": np.arange(100), "loss": 0.2}),
                      pd.DataFrame({"split": "val", "step": [99], "val_loss": [0.22]})], ignore_index=True)
    assert run_warnings({"model.kwargs.use_velocity_alignment": True,
                         "model.kwargs.velocity_warmup_steps": 50}, {"total_steps": 100}, fine) == []


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.setenv("ST_RUNS_DIR", str(tmp_path))
    logging.getLogger("app").disabled = True
    finished_run(tmp_path, "short", ["model.kwargs.use_velocity_alignment=true"], steps=12)
    finished_run(tmp_path, "keep")
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    return at


def runs_table(at):
    return next(t.value for t in at.dataframe if "progress" in t.value.columns)


def test_the_train_page_tags_deletes_and_warns(app, tmp_path):
    app.session_state["selected_run"] = "short"
    app.switch_page("views/train.py").run()
    assert any("only 12 training steps" in unescaped(w.value) for w in app.warning)
    assert any("warm-up (50 steps)" in unescaped(w.value) for w in app.warning)
    app.text_input(key="tags_short").set_value("baseline, quick")
    next(b for b in app.button if b.label == "Save tags").click().run()
    assert runs_table(app).loc["short", "tags"] == "baseline, quick"
    assert read_tags(tmp_path / "short") == ["baseline", "quick"]
    assert next(b for b in app.button if b.label == "Delete this run").disabled
    app.checkbox(key="delete_sure_short").check().run()
    next(b for b in app.button if b.label == "Delete this run").click().run()
    assert not app.exception
    assert not (tmp_path / "short").exists() and list(runs_table(app).index) == ["keep"]


def test_the_train_page_clones_a_run_with_changes(app, tmp_path):
    app.session_state["selected_run"] = "keep"
    app.switch_page("views/train.py").run()
    app.text_area(key="clone_changes_keep").set_value("training.seed=7\nmodel.kwargs.use_mhc=true")
    next(b for b in app.button if b.label == "Launch the clone").click().run()
    assert not app.exception and not app.error
    clone = tmp_path / "keep-clone"
    (clone / "STOP").write_text("stop after preparing data\n")  # its settings are written by then
    deadline = time.monotonic() + 600  # only stops a hung test; the trainer ends in seconds
    while read_status(clone)["state"] not in ("cancelled", "failed", "completed") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert read_status(clone)["state"] == "cancelled"
    source, copy = flatten(read_config(tmp_path / "keep")), flatten(read_config(clone))
    differ = {k for k in set(source) | set(copy) if source.get(k) != copy.get(k)}
    assert differ == {"training.seed", "model.kwargs.use_mhc", "run.name", "run.dir"}
    assert copy["training.seed"] == 7 and copy["model.kwargs.use_mhc"] is True
    assert yaml.safe_load((tmp_path / "keep" / "config.yaml").read_text())["training"]["seed"] == 0


def test_the_train_page_resumes_a_cancelled_run_in_its_own_folder(app, tmp_path):
    finished_run(tmp_path, "stopped", state="cancelled")
    app.session_state["selected_run"] = "keep"
    app.switch_page("views/train.py").run()
    assert not any(b.label == "Resume from its last checkpoint" for b in app.button)  # completed: nothing to resume
    app.session_state["selected_run"] = "stopped"
    app.run()
    next(b for b in app.button if b.label == "Resume from its last checkpoint").click().run()
    assert not app.exception and not app.error
    assert any("stopped is resuming" in s.value for s in app.success)
    run = tmp_path / "stopped"
    (run / "STOP").write_text("stop after preparing data\n")
    deadline = time.monotonic() + 600  # only stops a hung test
    while read_status(run)["state"] not in ("cancelled", "failed", "completed") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert read_status(run)["state"] == "cancelled"
    assert "training.resume=true" in (run / "log.txt").read_text()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["keep", "short", "stopped"]
