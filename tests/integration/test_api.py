"""The public Python API (core.load, velocity, train, evaluate, predict, pl, Run), called directly as a notebook
would, and the progress bars it shows."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from support import TINY_MODEL

import core
from core.errors import ConfigError
from core.progress import ProgressBar, wants_progress
from core.runs import list_runs

TINY = [*TINY_MODEL, "training.max_steps=4", "training.val_freq=2", "model.kwargs.lora.enable=false"]


@pytest.fixture(scope="module")
def api_run(small_demo, tmp_path_factory):
    folder = tmp_path_factory.mktemp("api")
    path = folder / "small.h5ad"
    small_demo.write_h5ad(path)
    run = core.train([*TINY, f"data.kwargs.path={path}", f"run.root={folder / 'runs'}"], name="api", progress=False)
    return run, path


def test_importing_core_does_not_import_torch_until_the_api_is_used():
    code = "import core, core.errors, sys; print('torch' in sys.modules); core.Run; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_load_reads_the_demo_and_files_and_never_writes_them(api_run, small_demo):
    demo = core.load("demo")
    assert demo.n_obs == 12_000 and "X_pca" in demo.obsm and "velocity_pca" not in demo.obsm
    _, path = api_run
    before = path.read_bytes()
    loaded = core.load(path)
    assert loaded.n_obs == small_demo.n_obs and np.allclose(loaded.obsm["X_pca"], small_demo.obsm["X_pca"])
    assert path.read_bytes() == before
    with pytest.raises(ConfigError, match="the demo atlas has no RNA velocity"):
        core.load("atlas", with_velocity=True)


def test_velocity_writes_the_documented_keys_or_returns_a_copy(small_demo):
    adata = small_demo.copy()
    del adata.obsm["velocity_pca"]
    del adata.obs["velocity_confidence"]
    copied = core.rna_velocity(adata, copy=True, use_cache=False, progress=False)
    assert "velocity_pca" not in adata.obsm  # copy=True leaves the input alone
    assert copied.obsm["velocity_pca"].shape == adata.obsm["X_pca"].shape
    assert "velocity" in copied.layers and "velocity_confidence" in copied.obs
    assert core.rna_velocity(adata, use_cache=False, progress=False) is None
    np.testing.assert_allclose(adata.obsm["velocity_pca"], copied.obsm["velocity_pca"], rtol=1e-5, atol=1e-6)


def test_train_returns_a_run_that_the_cli_and_the_app_list_like_any_other(api_run):
    run, _ = api_run
    assert isinstance(run, core.Run) and run.name == "api" and run.state == "completed"
    train_rows = run.metrics.query("split == 'train'")
    assert list(train_rows["step"]) == [1, 2, 3, 4]
    assert run.config["training"]["max_steps"] == 4
    assert run.path in [entry["path"] for entry in list_runs(run.path.parent)]
    assert run in core.runs_list(run.path.parent)
    assert repr(run) == "Run('api', completed, step 4/4)"


def test_evaluate_returns_the_model_next_to_its_baselines_as_written_to_the_run(api_run):
    run, _ = api_run
    table = core.evaluate(run)
    assert isinstance(table, pd.DataFrame) and {"model", "no_change"} <= set(table.index)
    written = run.evaluation["overall"]
    assert table.loc["model", "energy_distance"] == pytest.approx(written["model"]["energy_distance"])
    assert table.loc["no_change", "energy_distance"] == pytest.approx(written["no_change"]["energy_distance"])


def test_predict_from_a_run_equals_predict_from_its_folder(api_run, small_demo):
    run, _ = api_run
    by_run = core.predict(run, small_demo, seed=3)
    by_path = core.predict(str(run.path), small_demo, seed=3)
    assert by_run.obsm["X_pred"].shape[1] == small_demo.obsm["X_pca"].shape[1]
    np.testing.assert_array_equal(by_run.obsm["X_pred"], by_path.obsm["X_pred"])


def test_pl_returns_the_apps_plotly_figures(api_run):
    run, _ = api_run
    figures = core.pl.training(run)
    assert figures and all(hasattr(f, "to_plotly_json") for f in figures.values())
    loss = next(iter(figures.values()))
    assert any(len(trace.x) == 4 for trace in loss.data)  # the run's four steps
    assert core.pl.mhc(run) == {}  # no mHC in this run


def test_progress_bars_show_on_request_and_stay_off_when_output_is_captured(capsys, api_run, small_demo):
    assert wants_progress(None) is False  # pytest captures stderr: not a terminal, not a notebook
    with ProgressBar(10, "job", enabled=True) as bar:
        bar.update(5, loss=0.25)
    err = capsys.readouterr().err
    assert "job" in err and "5/10" in err and "loss=0.25" in err
    run, path = api_run
    core.train([*TINY, f"data.kwargs.path={path}", f"run.root={run.path.parent}"], name="api-bar", progress=True)
    err = capsys.readouterr().err
    assert "training api-bar" in err and "4/4" in err
    core.evaluate(core.Run(run.path.parent / "api-bar"), progress=True)
    err = capsys.readouterr().err
    assert "evaluating api-bar" in err and "4/4" in err
