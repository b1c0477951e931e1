"""A real fine-tune launched from the Train page (LoRA + mHC + velocity from the demo base, one short epoch),
followed live to completion, then shown on Inspect and Compare with the run's own numbers; and a run
cancelled from the page stops within seconds."""

import time

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest
from support import charts, unescaped

from core.runs import list_mhc_snapshots, load_mhc_snapshot, read_metrics, read_status

pytestmark = pytest.mark.slow  # trains, or drives a real server: left out of the fast lane

APP = "../../app/main.py"
# One epoch, capped at a few steps so the test stays in seconds on 2 CPU cores; snapshots every 2 steps.
TINY = "training.max_steps=6\ntraining.mhc_snapshot_every=2\ntraining.val_freq=3"






def fill_form(at, name, mhc=True, velocity=True, extra=TINY, epochs=1):
    at.switch_page("views/train.py").run()
    at.text_input(key="tf_name").set_value(name)
    at.toggle(key="tf_mhc").set_value(mhc)
    at.toggle(key="tf_velocity").set_value(velocity)
    at.number_input(key="tf_epochs").set_value(epochs)
    at.selectbox(key="tf_device").set_value("CPU")
    at.text_area(key="tf_extra").set_value(extra)
    next(b for b in at.button if b.label == "Launch").click().run()


def poll(at, until, timeout=420.0):
    """Rerun the page (what the page's 1 s fragment timer does in a browser) until ``until(at)``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        at.run()
        assert not at.exception
        if until(at):
            return
        time.sleep(1.0)
    raise AssertionError("timed out waiting for the page")


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def trained(runs_root):
    """Launch from the form, follow the live view to the end; returns (app, run folder, progress texts)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("ST_RUNS_DIR", str(runs_root))
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    fill_form(at, "ui-lora-mhc-velocity")
    assert not at.error, [unescaped(e.value) for e in at.error]
    assert any("Launched **ui-lora-mhc-velocity**" in s.value for s in at.success)
    seen = []

    def finished(at):
        seen.extend(p.proto.text for p in at.get("progress"))
        return any("completed in" in s.value for s in at.success) or bool(at.error)

    poll(at, finished)
    yield at, runs_root / "ui-lora-mhc-velocity", seen
    mp.undo()


def test_run_from_the_form_completes_with_live_progress(trained):
    at, run_dir, seen = trained
    assert not at.error, [unescaped(e.value) for e in at.error]
    assert read_status(run_dir)["state"] == "completed"
    assert any(text.startswith("running: step") for text in seen)
    config = (run_dir / "config.yaml").read_text()
    assert "use_mhc: true" in config and "use_velocity_alignment: true" in config and "init_from: demo" in config


def test_live_curves_show_the_runs_own_losses(trained):
    at, run_dir, _ = trained
    metrics = read_metrics(run_dir)
    train = metrics[metrics["split"] == "train"].sort_values("step")
    loss = charts(at)["Loss (raw faint, smoothed solid)"]
    raw = next(t for t in loss["data"] if t["name"] == "train total (raw)")
    np.testing.assert_allclose(raw["y"], train["loss"], rtol=1e-6)
    cos = charts(at)["cos(Δz, v_z) during training"]
    np.testing.assert_allclose(cos["data"][0]["y"], train["cos_similarity"], rtol=1e-6)
    lam = charts(at)["Velocity warm-up λ_t"]
    np.testing.assert_allclose(lam["data"][0]["y"], train["lambda_t"], rtol=1e-6)


def test_inspect_shows_the_runs_h_res_snapshots(trained):
    at, run_dir, _ = trained
    at.switch_page("views/inspect.py").run()
    assert not at.exception
    steps = [step for step, _ in list_mhc_snapshots(run_dir)]
    assert at.select_slider(key="inspect_step").options == [str(s) for s in steps]
    last = load_mhc_snapshot(list_mhc_snapshots(run_dir)[-1][1])
    figure = charts(at)[f"H_res at step {steps[-1]} (rows: output stream, columns: input stream)"]
    heatmaps = [np.asarray(t["z"]) for t in figure["data"] if t["type"] == "heatmap"]
    np.testing.assert_allclose(heatmaps, last["h_res"], rtol=1e-6)
    # The trained mappings stayed doubly stochastic (rows exact, columns within Sinkhorn's tolerance).
    np.testing.assert_allclose(np.sum(heatmaps, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.sum(heatmaps, axis=-2), 1.0, atol=1e-2)


def test_compare_lists_the_run_and_draws_its_curve(trained):
    at, run_dir, _ = trained
    at.switch_page("views/compare.py").run()
    assert not at.exception
    assert "ui-lora-mhc-velocity" in at.multiselect(key="compare_runs").value
    assert any(title.startswith("loss per run") for title in charts(at))
    stability = next(t.value for t in at.dataframe if "grad_norm_max" in t.value.columns)
    grad = read_metrics(run_dir).query("split == 'train'")["grad_norm"]
    assert stability.loc["ui-lora-mhc-velocity", "grad_norm_max"] == pytest.approx(grad.max())


def test_cancel_from_the_page_stops_the_run(trained, runs_root):
    at, _, _ = trained
    fill_form(at, "to-cancel", mhc=False, velocity=False, extra="", epochs=100)
    poll(at, lambda at: any(b.label == "Cancel this run" for b in at.button), timeout=60)
    next(b for b in at.button if b.label == "Cancel this run").click().run()
    assert read_status(runs_root / "to-cancel")["state"] == "cancelled"
    assert any("to-cancel is cancelled" in unescaped(w.value) for w in at.warning)


def test_inspect_evaluates_the_run_and_shows_delta_z_against_velocity(trained, demo_with_velocity):
    import anndata as ad
    import pandas as pd
    from scipy.spatial.distance import cosine

    at, run_dir, _ = trained
    at.session_state["selected_run"] = "ui-lora-mhc-velocity"
    at.session_state["inspect_tab"] = "Δz vs velocity"  # only the open tab is drawn
    at.switch_page("views/inspect.py").run()
    at.button(key="evaluate_run").click().run(timeout=300)
    assert not at.exception and not at.error, [unescaped(e.value) for e in at.error]
    assert (run_dir / "eval" / "predictions.h5ad").is_file()

    # Per-cell-type metrics: the model next to both baselines, as evaluate wrote them.
    shown = next(t.value for t in at.dataframe if "energy_distance · model" in t.value.columns)
    written = pd.read_csv(run_dir / "eval" / "per_cell_type.csv")
    model = written[written["method"] == "model"].set_index("cell_type")["energy_distance"]
    np.testing.assert_allclose(shown["energy_distance · model"].loc[model.index], model, rtol=1e-6)
    assert {"energy_distance · no_change", "energy_distance · train_mean_shift"} <= set(shown.columns)

    # cos(Δz, v_z) per predicted control cell, recomputed here with scipy from the files themselves.
    predictions = ad.read_h5ad(run_dir / "eval" / "predictions.h5ad")
    rows = demo_with_velocity.obs_names.get_indexer(predictions.obs["matched_control"].astype(str))
    v_z = demo_with_velocity.obsm["velocity_pca"][rows]
    delta_z = np.asarray(predictions.obsm["delta_z"])
    with np.errstate(invalid="ignore"):
        cos = np.array([1 - cosine(d, v) for d, v in zip(delta_z, v_z)])
    cos = cos[np.isfinite(cos)]  # a cell with zero velocity has no direction
    metric = next(m for m in at.metric if m.label == "Median cos(Δz, v_z)")
    assert metric.value == f"{np.median(cos):+.3f}"
    hist = charts(at)["Alignment of the predicted shift with velocity, per cell type"]
    assert sum(len(t["x"]) for t in hist["data"]) == len(cos) > 0.5 * len(delta_z)
    arrows = charts(at)["Δz and v_z on the UMAP (grid-averaged on 25×25)"]
    assert {t.get("name") for t in arrows["data"]} >= {"Δz", "v_z"}
