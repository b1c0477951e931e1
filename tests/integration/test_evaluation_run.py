"""``python -m core evaluate RUN`` end to end: a tiny real training on a small demo subset, then evaluation,
with the baselines' numbers checked against a direct computation from the data and split.csv."""

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from core.__main__ import main

KEYS = {
    "embed_key": "X_pca",
    "pert_col": "condition",
    "control_pert": "sham",
    "cell_type_key": "cell_types_simple_short",
    "batch_col": "mouse_id",
    "velocity_key": "velocity_pca",
    "confidence_key": "velocity_confidence",
}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, small_demo):
    from core.config import load_config
    from core.training.run import train

    root = tmp_path_factory.mktemp("eval_runs")
    data_path = root / "small_demo.h5ad"
    small_demo.write_h5ad(data_path)
    overrides = [
        f"data.kwargs.path={data_path}",
        *[f"data.kwargs.{key}={value}" for key, value in KEYS.items()],
        "training.max_steps=3",
        "training.batch_size=4",
        "training.accelerator=cpu",
        "model.kwargs.hidden_dim=16",
        "model.kwargs.n_layers=1",
        "model.kwargs.n_heads=2",
        "model.kwargs.cell_set_len=8",
        "run.name=tiny-eval",
        f"run.root={root}",
    ]
    run_dir = train(load_config(overrides=overrides))
    return run_dir, data_path


@pytest.fixture(scope="module")
def evaluated(trained_run):
    run_dir, _ = trained_run
    assert main(["evaluate", str(run_dir), "--top-k", "5"]) == 0
    return run_dir, json.loads((run_dir / "eval" / "metrics.json").read_text())


def test_evaluate_writes_metrics_table_and_predictions_for_the_test_controls(trained_run, evaluated):
    run_dir, summary = evaluated
    _, data_path = trained_run
    data = ad.read_h5ad(data_path)
    split = pd.read_csv(run_dir / "split.csv", dtype=str).set_index("obs_name")["split"]
    test_controls = split.index[(split == "test").to_numpy()].intersection(
        data.obs_names[(data.obs["condition"] == "sham").to_numpy()]
    )
    predictions = ad.read_h5ad(run_dir / "eval" / "predictions.h5ad")
    assert sorted(predictions.obs["matched_control"]) == sorted(test_controls)
    assert predictions.obsm["X_pred"].shape == (len(test_controls), data.obsm["X_pca"].shape[1])
    table = pd.read_csv(run_dir / "eval" / "per_cell_type.csv")
    cell_types = sorted(data.obs["cell_types_simple_short"].astype(str).unique())
    assert sorted(table["cell_type"].unique()) == cell_types
    assert len(table) == 7 * len(cell_types)  # the model, 5 baselines and the real-vs-real floor
    assert set(summary["per_cell_type"]) == set(cell_types)
    assert summary["overall"]["model"]["n_pred"] == len(test_controls)
    assert summary["stability"]["n_steps"] == 3 and summary["settings"]["top_k"] == 5


def test_baselines_match_a_direct_computation_from_the_data(trained_run, evaluated):
    run_dir, summary = evaluated
    _, data_path = trained_run
    data = ad.read_h5ad(data_path)
    split = pd.read_csv(run_dir / "split.csv", dtype=str).set_index("obs_name")["split"].reindex(data.obs_names)
    z = np.asarray(data.obsm["X_pca"], dtype=np.float64)
    kind = data.obs["cell_types_simple_short"].astype(str).to_numpy()
    sham = (data.obs["condition"] == "sham").to_numpy()
    for cell_type, scores in summary["per_cell_type"].items():
        in_type = kind == cell_type
        test_sham = z[in_type & sham & (split == "test").to_numpy()]
        test_burn = z[in_type & ~sham & (split == "test").to_numpy()]
        train_shift = (z[in_type & ~sham & (split == "train").to_numpy()].mean(0)
                       - z[in_type & sham & (split == "train").to_numpy()].mean(0))
        # no change predicts the sham cells themselves: the error of means is the real mean shift
        assert scores["no_change"]["mae_mean"] == pytest.approx(np.abs(test_sham.mean(0) - test_burn.mean(0)).mean())
        gap = test_sham.mean(0) + train_shift - test_burn.mean(0)
        assert scores["train_mean_shift"]["mse_mean"] == pytest.approx((gap**2).mean())
        assert scores["model"]["n_velocity_cells"] == len(test_sham)


def test_evaluate_of_a_missing_run_is_one_line_with_exit_code_2(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no run folder") and err.count("\n") == 1


def test_evaluate_without_split_file_says_what_is_missing(trained_run, tmp_path, capsys):
    import shutil

    run_dir, _ = trained_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("eval", "split.csv"))
    assert main(["evaluate", str(copy)]) == 2
    assert "split.csv is missing" in capsys.readouterr().err


def test_a_best_checkpoint_kept_at_the_last_step_is_the_final_one(evaluated):
    _, summary = evaluated
    final = summary["final"]
    assert summary["checkpoint_step"] == final["step"] == 3 and final["same_as_best"]
    assert final["checkpoint"].endswith("final.ckpt") and "overall" not in final


def test_evaluate_scores_the_final_checkpoint_as_evaluating_it_alone_would(trained_run, tmp_path):
    import shutil

    import torch

    run_dir, _ = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("eval"))
    # an earlier best: another state of the weights, kept at step 1
    best = torch.load(copy / "checkpoints" / "best.ckpt", weights_only=False, map_location="cpu")
    best["global_step"] = 1
    best["state_dict"] = {k: v * 0.5 if v.is_floating_point() else v for k, v in best["state_dict"].items()}
    torch.save(best, copy / "checkpoints" / "best.ckpt")
    assert main(["evaluate", str(copy), "--top-k", "5", "--no-predictions"]) == 0
    summary = json.loads((copy / "eval" / "metrics.json").read_text())
    final = summary["final"]
    assert summary["checkpoint_step"] == 1 and final["step"] == 3 and not final["same_as_best"]
    assert main(["evaluate", str(copy), "--top-k", "5", "--checkpoint", final["checkpoint"],
                 "--output", str(tmp_path / "final"), "--no-predictions"]) == 0
    alone = json.loads((tmp_path / "final" / "metrics.json").read_text())
    assert alone["final"]["same_as_best"]  # a given checkpoint is scored alone
    for key in ("energy_distance", "mae_mean", "pearson_delta", "cos_delta_v"):
        assert final["overall"]["model"][key] == pytest.approx(alone["overall"]["model"][key], rel=1e-9)
    assert summary["overall"]["model"]["energy_distance"] != pytest.approx(final["overall"]["model"]["energy_distance"])


def test_evaluate_names_the_design_held_out_mice_by_default_for_burn_sham(evaluated):
    run_dir, summary = evaluated
    assert summary["design"]["split"] == "batch" and summary["design"]["warnings"] == []
    split = pd.read_csv(run_dir / "split.csv", dtype=str)
    data_mice = ad.read_h5ad(run_dir.parent / "small_demo.h5ad").obs["mouse_id"].astype(str)
    mice = data_mice.reindex(split["obs_name"]).to_numpy()
    test_mice, train_mice = set(mice[split["split"] == "test"]), set(mice[split["split"] == "train"])
    assert len(test_mice) == 2 and not test_mice & train_mice  # one burn and one sham mouse, never trained on


def test_cos_with_the_demo_s_true_velocity_is_the_mean_over_predicted_cells(trained_run, evaluated):
    """On the demo, evaluate also reports cos(dz, true velocity): here recomputed from the saved predictions and
    the data's obsm['true_velocity_pca'], per cell type, unweighted; and it is reported for the final checkpoint."""
    run_dir, summary = evaluated
    _, data_path = trained_run
    data = ad.read_h5ad(data_path)
    predictions = ad.read_h5ad(run_dir / "eval" / "predictions.h5ad")
    rows = data.obs_names.get_indexer(predictions.obs["matched_control"])
    delta = np.asarray(predictions.obsm["X_pred"], np.float64) - np.asarray(data.obsm["X_pca"], np.float64)[rows]
    truth = np.asarray(data.obsm["true_velocity_pca"], np.float64)[rows]
    cos = (delta * truth).sum(1) / (np.linalg.norm(delta, axis=1) * np.linalg.norm(truth, axis=1))
    kind = data.obs["cell_types_simple_short"].astype(str).to_numpy()[rows]
    for cell_type, scores in summary["per_cell_type"].items():
        assert scores["model"]["cos_delta_true_v"] == pytest.approx(cos[kind == cell_type].mean(), abs=1e-9)
    final = summary["final"]
    source = summary["overall"] if final["same_as_best"] else final["overall"]
    assert np.isfinite(source["model"]["cos_delta_true_v"])


def test_gene_space_fold_changes_are_the_data_and_the_pca_decoded_predictions(trained_run, evaluated):
    # observed: log2(expm1(mean X burn) / expm1(mean X control)) of the held-out cells; model: the same of the
    # predictions and their controls decoded through varm['PCs'] and var['pca_mean'], computed here directly
    run_dir, summary = evaluated
    _, data_path = trained_run
    data = ad.read_h5ad(data_path)
    genes = summary["genes"]
    assert genes["decoder"]["kind"] == "pca" and genes["decoder"]["n_genes"] == data.n_vars
    assert "var['pca_mean']" in genes["decoder"]["description"]
    table = pd.read_csv(run_dir / "eval" / "gene_lfc.csv")
    predictions = ad.read_h5ad(run_dir / "eval" / "predictions.h5ad")
    split = pd.read_csv(run_dir / "split.csv", dtype=str).set_index("obs_name")["split"].reindex(data.obs_names)
    kind = "Fibroblast"
    of_kind = predictions.obs["cell_types_simple_short"].astype(str).to_numpy() == kind
    controls = data[sorted(set(predictions.obs["matched_control"][of_kind]))]
    burn = data[((data.obs["condition"] == "burn") & (data.obs["cell_types_simple_short"] == kind)
                 & (split == "test")).to_numpy()]
    rows = table[table["cell_type"] == kind].set_index("gene").loc[data.var_names]

    def lfc(a, b):
        return np.log2(np.expm1(a.mean(0)) / np.expm1(b.mean(0)))

    np.testing.assert_allclose(rows["observed_log2fc"], lfc(np.asarray(burn.X, float), np.asarray(controls.X, float)),
                               atol=1e-6)
    pcs, mean = data.varm["PCs"].astype(float), data.var["pca_mean"].to_numpy(float)
    decoded_pred = mean + predictions.obsm["X_pred"][of_kind].astype(float) @ pcs.T
    decoded_control = mean + controls.obsm["X_pca"].astype(float) @ pcs.T
    np.testing.assert_allclose(rows["model_log2fc"], lfc(decoded_pred, decoded_control), atol=1e-6)
    entry = genes["per_cell_type"][kind]
    finite = np.isfinite(rows["model_log2fc"]) & np.isfinite(rows["observed_log2fc"])
    assert entry["model"]["pearson_lfc"] == pytest.approx(
        np.corrcoef(rows["model_log2fc"][finite], rows["observed_log2fc"][finite])[0, 1], abs=1e-9)
    assert set(genes["per_cell_type"]) == set(data.obs["cell_types_simple_short"].astype(str))
    # the demo's burn raises the wound-response genes (and moves cells along their trajectory, demo v4): the
    # observed top up genes are mostly wound genes, far above their share of all genes
    wound = set(data.var_names[data.var["wound_response"].to_numpy()])
    top = entry["observed"]["top_up"][:10]
    assert len(top) == 10 and len(set(top) & wound) / 10 > 5 * len(wound) / data.n_vars


def test_without_a_decoder_the_evaluation_says_so_and_writes_no_gene_table(trained_run, tmp_path):
    run_dir, data_path = trained_run
    data = ad.read_h5ad(data_path)
    del data.varm["PCs"]
    no_loadings = tmp_path / "no_loadings.h5ad"
    data.write_h5ad(no_loadings)
    out = tmp_path / "eval"
    assert main(["evaluate", str(run_dir), "--adata", str(no_loadings), "--output", str(out),
                 "--no-predictions"]) == 0
    genes = json.loads((out / "metrics.json").read_text())["genes"]
    assert genes["decoder"] is None and "varm['PCs'] is missing" in genes["reason"]
    assert not (out / "gene_lfc.csv").exists()
