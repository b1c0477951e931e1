"""Inference: one prediction per control cell and perturbation, in cell-type-pure sets, equal to the model's own
output, with delta_z and the matched control stored; errors for unknown labels; the input file is never written."""

import contextlib
import hashlib
import io

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from support import TINY_MODEL

from core.config import load_config
from core.errors import CheckpointError, DataError
from core.infer import load_model, predict
from core.training.run import train

TINY = [*TINY_MODEL, "training.max_steps=6", "model.kwargs.lora.enable=false",
        "data.kwargs.split=fraction"]  # sizes below are of the held-out-cells design (default: held-out mice)


@pytest.fixture(scope="module")
def trained(small_demo, tmp_path_factory):
    folder = tmp_path_factory.mktemp("infer")
    path = folder / "small.h5ad"
    small_demo.write_h5ad(path)
    run = train(load_config(overrides=TINY + [f"data.kwargs.path={path}", f"run.root={folder}", "run.name=st"]))
    return run, path


def test_one_prediction_per_control_cell_with_delta_z_and_matched_control(trained, small_demo):
    run, _ = trained
    preds = predict(run, small_demo)
    controls = small_demo.obs_names[small_demo.obs["condition"] == "sham"]
    assert preds.n_obs == len(controls) == 600
    assert sorted(preds.obs["matched_control"]) == sorted(controls)
    assert preds.obsm["X_pred"].shape == preds.obsm["delta_z"].shape == (600, 50)
    z_control = small_demo[preds.obs["matched_control"]].obsm["X_pca"]
    assert np.allclose(preds.obsm["delta_z"], preds.obsm["X_pred"] - z_control, atol=1e-6)
    assert (preds.obs["condition"] == "burn").all()
    assert list(preds.obs_names[:1]) == [f"{preds.obs['matched_control'].iloc[0]}|burn"]
    same_type = small_demo.obs.loc[preds.obs["matched_control"], "cell_types_simple_short"].to_numpy()
    assert (preds.obs["cell_types_simple_short"].to_numpy() == same_type).all()
    assert (preds.obs.groupby("set_index", observed=True)["cell_types_simple_short"].nunique() == 1).all()
    assert np.abs(preds.obsm["delta_z"]).max() > 0  # a trained model moves the cells


def test_predictions_are_the_models_output_on_the_same_set(trained, small_demo):
    run, _ = trained
    preds = predict(run, small_demo, set_len=16, seed=5)
    model, _, _ = load_model(run, "cpu")
    first = preds.obs["set_index"] == 0
    rows = small_demo.obs_names.get_indexer(preds.obs.loc[first, "matched_control"])
    assert first.sum() == 16  # 100 sham cells per type: the first set is full, no filler
    with torch.no_grad():
        direct = model(torch.from_numpy(small_demo.obsm["X_pca"][rows]).float()[None], torch.tensor([1]))[0]
    assert np.allclose(preds.obsm["X_pred"][first.to_numpy()], direct.numpy(), atol=1e-5)


def test_a_chosen_subset_and_sets_larger_than_a_group_still_predict_every_cell_once(trained, small_demo):
    run, _ = trained
    split = pd.read_csv(run / "split.csv")
    test_cells = split.loc[split["split"] == "test", "obs_name"].to_numpy()
    preds = predict(run, small_demo, control_cells=test_cells, set_len=40)
    expected = [c for c in test_cells if small_demo.obs.loc[c, "condition"] == "sham"]
    assert len(expected) == 90 and sorted(preds.obs["matched_control"]) == sorted(expected)
    assert preds.uns["st_infer"]["n_sets"] == 6  # 15 test controls per cell type: one filled-up set each


def test_unknown_perturbation_wrong_embedding_and_no_controls_are_one_line_errors(trained, small_demo):
    run, _ = trained
    with pytest.raises(CheckpointError, match=r"not trained on perturbation\(s\) \['heat'\]; it knows \['burn'\]"):
        predict(run, small_demo, perturbations=["heat"])
    with pytest.raises(CheckpointError, match="trained on 50-d embeddings"):
        predict(run, small_demo, mapping={"embed_key": "X_umap"})
    burn_only = small_demo.obs_names[small_demo.obs["condition"] == "burn"]
    with pytest.raises(DataError, match="none of the chosen cells is a control cell"):
        predict(run, small_demo, control_cells=burn_only)


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cli(*argv):
    from core.__main__ import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_cli_writes_a_new_file_and_never_touches_the_input(trained, tmp_path):
    run, data = trained
    before = _digest(data)
    output = tmp_path / "preds.h5ad"
    code, out, _ = _cli("infer", "--checkpoint", str(run / "checkpoints" / "final.ckpt"), "--adata", str(data),
                        "--output", str(output), "--split", "val", "--celltype-col", "cell_types_simple_short")
    assert code == 0 and "90 predictions" in out
    assert _digest(data) == before
    preds = ad.read_h5ad(output)
    assert preds.obsm["X_pred"].shape == (90, 50) and "matched_control" in preds.obs
    code, _, err = _cli("infer", "--checkpoint", str(run), "--adata", str(data), "--output", str(data))
    assert code == 2 and err.strip().splitlines() == ["error: --output must differ from --adata: the input file is "
                                                      "never overwritten"]
    assert _digest(data) == before


def test_cli_takes_a_run_name_from_the_runs_folder(trained, tmp_path, monkeypatch):
    # the README's `infer --run st-lora` must work wherever ST_RUNS_DIR points (a checkpoint path did not)
    run, data = trained
    monkeypatch.setenv("ST_RUNS_DIR", str(run.parent))
    output = tmp_path / "by_name.h5ad"
    code, out, err = _cli("infer", "--run", run.name, "--adata", str(data), "--output", str(output),
                          "--split", "val", "--celltype-col", "cell_types_simple_short")
    assert code == 0, err
    by_path = tmp_path / "by_path.h5ad"
    assert _cli("infer", "--checkpoint", str(run), "--adata", str(data), "--output", str(by_path), "--split", "val",
                "--celltype-col", "cell_types_simple_short")[0] == 0
    np.testing.assert_array_equal(ad.read_h5ad(output).obsm["X_pred"], ad.read_h5ad(by_path).obsm["X_pred"])
    code, _, err = _cli("infer", "--run", "no-such-run", "--output", str(tmp_path / "x.h5ad"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no run named 'no-such-run'" in err
    code, _, err = _cli("infer", "--output", str(tmp_path / "x.h5ad"))
    assert code == 2 and "--run NAME" in err
