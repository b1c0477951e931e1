"""Exports follow what the app shows (the Train page's log axis and smoothing; the Data and Compare pages'
figures as last drawn), and a run's zip holds what is needed to understand and reuse the run."""

import io
import logging
import zipfile

import numpy as np
import pytest
import yaml
from streamlit.testing.v1 import AppTest

from core.errors import UserError
from core.figures import export
from core.runs import RunWriter

APP = "../../app/main.py"


@pytest.fixture
def run_dir(tmp_path):
    path = tmp_path / "runs" / "mhc-run"
    with RunWriter(path) as writer:
        writer.write_status("running", total_steps=40)
        for step in range(40):
            writer.append_metrics({"split": "train", "step": step, "epoch": 0, "loss": 2.0 / (step + 1)})
        writer.snapshot_mhc(0, [{"h_res": np.full((4, 4), 0.25), "h_pre": np.full(4, 0.25), "h_post": np.ones(4),
                                 "layer_index": 0}])
        writer.write_status("completed")
    (path / "config.yaml").write_text(yaml.safe_dump({"model": {"kwargs": {"use_mhc": True}},
                                                      "training": {"seed": 0}, "run": {"name": "mhc-run"}}))
    (path / "log.txt").write_text("12:00:00 training on cpu\n")
    (path / "split.csv").write_text("obs_name,split\nc1,train\n")
    (path / "checkpoints").mkdir()
    (path / "checkpoints" / "best.ckpt").write_bytes(b"not really a checkpoint, just its bytes")
    return path


def test_the_run_zip_holds_log_split_config_snapshots_and_optionally_the_checkpoint(run_dir):
    from core.figures.training import training_figures
    from core.runs import read_metrics

    figures = {"loss": training_figures(read_metrics(run_dir))["loss"]}
    names = set(zipfile.ZipFile(io.BytesIO(export.run_bundle(run_dir, figures, image_formats=("svg",)))).namelist())
    assert {"log.txt", "split.csv", "config.yaml", "status.json", "mhc/step_0000000.npz", "metrics.csv"} <= names
    assert not any(n.startswith("checkpoints/") for n in names)
    with_ckpt = zipfile.ZipFile(io.BytesIO(export.run_bundle(run_dir, figures, image_formats=("svg",),
                                                             checkpoint="best")))
    assert with_ckpt.read("checkpoints/best.ckpt") == (run_dir / "checkpoints" / "best.ckpt").read_bytes()
    with pytest.raises(UserError, match="no checkpoints/final.ckpt"):
        export.run_bundle(run_dir, figures, checkpoint="final")


@pytest.fixture
def app(run_dir, monkeypatch):
    monkeypatch.setenv("ST_RUNS_DIR", str(run_dir.parent))
    logging.getLogger("app").disabled = True
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    assert not at.exception
    return at


def test_export_uses_the_train_pages_axis_and_smoothing(app):
    app.switch_page("views/export.py").run()
    assert any("loss on a log axis, smoothing 0.5" in c.value for c in app.caption)  # defaults: 40 steps
    app.switch_page("views/train.py").run()
    app.toggle(key="train_log_y").set_value(False)
    next(s for s in app.slider if s.label.startswith("Smoothing")).set_value(0.2).run()
    app.switch_page("views/export.py").run()
    assert not app.exception
    assert any("loss on a linear axis, smoothing 0.2" in c.value for c in app.caption)
    radio = app.radio(key="export_checkpoint")
    assert radio.options == ["none", "best.ckpt (0.0 MB)"]


def test_export_offers_the_data_pages_figures_as_last_shown(app):
    app.run()  # the Data page (default) draws the demo's UMAP
    app.selectbox(key="data_colour").set_value("condition").run()
    app.switch_page("views/export.py").run()
    rows = [t.value for t in app.text]
    assert any(r.startswith("umap_by_condition: UMAP coloured by condition") for r in rows)
    assert not any(r.startswith("umap_by_cell_types_simple_short") for r in rows)  # replaced by the new view
    assert any("None yet: the figures of the Compare page" in c.value for c in app.caption)
