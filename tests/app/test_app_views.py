"""The Inspect, Compare and Export pages show exactly what is in the run folders, and say what is wrong
without a traceback. Run folders are written through ``core.runs.RunWriter``, as the trainer writes them,
with values chosen so each figure's numbers can be checked by hand."""

import json
import logging
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
import yaml
from streamlit.testing.v1 import AppTest
from support import unescaped, unpack

from core.runs import RunWriter

APP = "../../app/main.py"
H_RES_STEP_0 = np.full((2, 4, 4), 0.25)
H_RES_STEP_20 = np.stack([np.eye(4)[[1, 0, 3, 2]] * 0.6 + 0.1, np.eye(4) * 0.4 + 0.15])  # doubly stochastic


def write_run(root: Path, name: str, mhc: bool, seed: int, state: str = "completed", message: str = "",
              losses=None) -> Path:
    path = root / name
    losses = np.linspace(2.0, 1.0, 21) if losses is None else losses
    with RunWriter(path) as writer:
        writer.write_status("running", total_steps=len(losses))
        for step, loss in enumerate(losses):
            writer.append_metrics({"split": "train", "step": step, "epoch": 0, "loss": float(loss),
                                   "dist_loss": float(loss) * 0.9, "grad_norm": 1.0 + step % 3, "lr": 1e-4})
        writer.append_metrics({"split": "val", "step": len(losses) - 1, "epoch": 0, "val_loss": 1.25})
        if mhc:
            for step, h_res in ((0, H_RES_STEP_0), (20, H_RES_STEP_20)):
                writer.snapshot_mhc(step, [{"h_res": h, "h_pre": np.full(4, 0.25), "h_post": np.ones(4),
                                            "layer_index": i} for i, h in enumerate(h_res)])
        writer.write_status(state, step=len(losses), message=message)
    config = {"model": {"kwargs": {"use_mhc": mhc, "lora": {"enable": True, "r": 8}}},
              "training": {"seed": seed, "max_epochs": 1}, "run": {"name": name}}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    (path / "log.txt").write_text("loading data\nValueError: loss became NaN at step 7 (dist_loss)\n")
    return path


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    write_run(root, "lora-s0", mhc=False, seed=0)
    write_run(root, "lora-s1", mhc=False, seed=1, losses=np.linspace(2.0, 1.0, 21) + 0.1)
    write_run(root, "mhc-s0", mhc=True, seed=0)
    write_run(root, "broken", mhc=False, seed=0, state="failed",
              message="the loss became NaN at step 7 in dist_loss; lower the learning rate")
    return root


@pytest.fixture
def app(runs_root, monkeypatch):
    monkeypatch.setenv("ST_RUNS_DIR", str(runs_root))
    logging.getLogger("app").disabled = True  # the sidebar may log while the data layer is missing
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    return at




def figures(at) -> list:
    """Every plotly chart of the page as a Figure, built from the JSON the browser receives."""
    return [go.Figure(unpack(json.loads(chart.proto.spec))) for chart in at.get("plotly_chart")]


def table_with(at, column: str):
    """The first table on the page with this column (st.dataframe keys are not exposed to AppTest)."""
    return next(t.value for t in at.dataframe if column in t.value.columns)


def by_title(at, text: str):
    return next(f for f in figures(at) if text in (f.layout.title.text or ""))


def test_inspect_shows_every_h_res_snapshot_value(app):
    app.session_state["selected_run"] = "mhc-s0"
    app.switch_page("views/inspect.py").run()
    assert not app.exception
    heatmaps = [t for t in by_title(app, "H_res at step 20").data if t.type == "heatmap"]
    np.testing.assert_allclose([np.asarray(t.z) for t in heatmaps], H_RES_STEP_20, atol=1e-6)
    app.select_slider(key="inspect_step").set_value(0).run()
    heatmaps = [t for t in by_title(app, "H_res at step 0").data if t.type == "heatmap"]
    np.testing.assert_allclose([np.asarray(t.z) for t in heatmaps], H_RES_STEP_0)
    summary = by_title(app, "Doubly-stochastic error and composite gain at step 0")
    gain = [t for t in summary.data if t.xaxis == "x2"]
    np.testing.assert_allclose([t.y for t in gain], [[1.0, 1.0], [1.0, 1.0]], atol=1e-6)
    # flat at 1 because every H_res is doubly stochastic: the figure says so rather than leave it to guess
    notes = [a.text for a in summary.layout.annotations]
    assert "Composite gain over depth: 1 by construction" in notes
    assert any("every H_res is doubly stochastic" in n for n in notes)
    assert len(app.get("download_button")) >= 3 * 4  # PNG, SVG and HTML for each figure


def test_inspect_without_mhc_says_why(app):
    app.session_state["selected_run"] = "lora-s0"
    app.switch_page("views/inspect.py").run()
    assert any("mHC was off" in info.value for info in app.info)
    assert not [f for f in figures(app) if "H_res" in (f.layout.title.text or "")]


def test_compare_table_shows_only_settings_that_differ(app):
    app.switch_page("views/compare.py").run()
    app.multiselect(key="compare_runs").set_value(["lora-s0", "lora-s1", "mhc-s0"]).run()
    table = table_with(app, "model.kwargs.use_mhc")
    assert set(table.columns) == {"state", "model.kwargs.use_mhc", "training.seed"}
    assert table.loc["mhc-s0", "model.kwargs.use_mhc"] == "True"


def test_compare_shows_mean_and_spread_across_seeds(app):
    app.switch_page("views/compare.py").run()
    app.multiselect(key="compare_runs").set_value(["lora-s0", "lora-s1", "mhc-s0"]).run()
    app.selectbox(key="compare_column").set_value("loss")
    next(s for s in app.slider if s.label == "Smoothing").set_value(0.0).run()
    band = by_title(app, "mean ± s.d. across seeds")
    mean = next(t for t in band.data if t.name.startswith("use_mhc=False (n=2"))
    # seeds 0 and 1 differ by exactly 0.1 at every step: mean = linspace + 0.05
    np.testing.assert_allclose(mean.y, np.linspace(2.0, 1.0, 21) + 0.05)
    stability = table_with(app, "grad_norm_max")
    assert stability.loc["lora-s0", "grad_norm_max"] == 3.0
    assert stability.loc["lora-s0", "loss_spikes"] == 0


def test_failed_run_shows_its_message_in_plain_words(app):
    app.session_state["selected_run"] = "broken"
    app.switch_page("views/train.py").run()
    errors = [unescaped(e.value) for e in app.error]
    assert any("broken failed: the loss became NaN at step 7" in e for e in errors)
    assert any("NaN at step 7" in c.value for c in app.code)  # the log tail
    assert not app.exception


def test_runs_table_lists_every_run_with_its_state(app):
    app.switch_page("views/train.py").run()
    table = table_with(app, "progress")
    assert dict(table["state"]) == {"lora-s0": "completed", "lora-s1": "completed", "mhc-s0": "completed",
                                    "broken": "failed"}


def test_export_offers_three_formats_per_figure_and_a_bundle(app):
    app.session_state["selected_run"] = "mhc-s0"
    app.switch_page("views/export.py").run()
    buttons = app.get("download_button")
    keys = {b.proto.id.rsplit("-", 1)[-1] for b in buttons}
    for name in ("loss", "h_res", "composite_gain", "h_pre_post"):
        assert {f"export_{name}_png", f"export_{name}_svg", f"export_{name}_html"} <= keys
    assert "export_bundle" in keys
    assert not app.exception


def test_selected_run_is_only_ever_one_of_the_listed_runs(app, runs_root):
    # A run chosen by name is always looked up among the runs folder's runs: a path-like name is not a run.
    app.session_state["selected_run"] = "../../etc"
    app.switch_page("views/inspect.py").run()
    assert app.selectbox(key="inspect_run").value in {"lora-s0", "lora-s1", "mhc-s0", "broken"}
    assert not app.exception


def test_empty_runs_folder_points_to_the_train_page(tmp_path, monkeypatch):
    monkeypatch.setenv("ST_RUNS_DIR", str(tmp_path))
    logging.getLogger("app").disabled = True
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    for page in ("views/inspect.py", "views/compare.py", "views/export.py"):
        at.switch_page(page).run()
        assert any("No runs yet" in info.value for info in at.info), page
        assert not at.exception


@pytest.mark.parametrize("name", ["../outside", "/tmp/abs", "a/b", ".."])
def test_run_name_with_a_path_is_refused_before_anything_is_written(app, runs_root, name):
    before = sorted(p.name for p in runs_root.parent.iterdir())
    inside = sorted(p.name for p in runs_root.iterdir())
    app.switch_page("views/train.py").run()
    app.text_input(key="tf_name").set_value(name)
    next(b for b in app.button if b.label == "Launch").click().run()
    assert any("run name" in e.value and "plain name" in unescaped(e.value) for e in app.error)
    assert sorted(p.name for p in runs_root.parent.iterdir()) == before
    assert sorted(p.name for p in runs_root.iterdir()) == inside
    assert not app.exception


def test_visiting_every_page_imports_neither_torch_nor_scvelo(runs_root):
    """Cold start and page switches stay fast because the heavy stacks load only when a button needs them
    (training runs in its own process). Checked in a fresh interpreter."""
    import os
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from streamlit.testing.v1 import AppTest\n"
        f"at = AppTest.from_file({str(Path(__file__).resolve().parents[2] / 'app' / 'main.py')!r}, "
        "default_timeout=120)\n"
        "at.run()\n"
        "for page in ('views/train.py', 'views/inspect.py', 'views/compare.py', 'views/export.py'):\n"
        "    at.switch_page(page).run()\n"
        "    assert not at.exception, page\n"
        "print(sorted(m for m in ('torch', 'scvelo', 'scanpy', 'lightning', 'transformers') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "ST_RUNS_DIR": str(runs_root)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
