"""A fine-tuned Arc gene-space model is evaluated in gene space through its own gene decoder: the predicted log2
fold changes are those of its decoder's output for the predictions and their controls, computed here directly."""

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

from core.__main__ import main
from core.infer import load_model

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "arc"


def test_gene_space_arc_run_is_evaluated_through_its_gene_decoder(tmp_path):
    rc = main(["train", f"model.init_from={FIXTURES / 'gene_llama'}",
               f"data.kwargs.path={FIXTURES / 'burn_sham_small.h5ad'}", "data.kwargs.embed_key=X_state_baseline",
               "data.kwargs.pert_col=condition", "data.kwargs.control_pert=sham",
               "data.kwargs.cell_type_key=cell_types_simple_short", "data.kwargs.split=fraction",
               "model.kwargs.cell_set_len=8", "training.max_steps=2", "training.accelerator=cpu",
               f"output_dir={tmp_path}", "name=gene-ft"])
    assert rc == 0
    run = tmp_path / "gene-ft"
    assert main(["evaluate", str(run)]) == 0
    genes = json.loads((run / "eval" / "metrics.json").read_text())["genes"]
    assert genes["decoder"]["kind"] == "arc" and genes["decoder"]["n_genes"] == 24
    assert "obsm['X_hvg']" in genes["decoder"]["description"]
    data = ad.read_h5ad(FIXTURES / "burn_sham_small.h5ad")
    predictions = ad.read_h5ad(run / "eval" / "predictions.h5ad")
    model, _, _ = load_model(run / "checkpoints" / "best.ckpt", "cpu")
    table = pd.read_csv(run / "eval" / "gene_lfc.csv")
    kind = sorted(genes["per_cell_type"])[0]
    of_kind = predictions.obs["cell_types_simple_short"].astype(str).to_numpy() == kind
    controls = data[sorted(set(predictions.obs["matched_control"][of_kind]))]
    with torch.no_grad():
        pred = model.gene_decoder(torch.as_tensor(predictions.obsm["X_pred"][of_kind])).double().numpy()
        ctrl = model.gene_decoder(torch.as_tensor(controls.obsm["X_state_baseline"])).double().numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = np.log2(np.expm1(pred.mean(0)) / np.expm1(ctrl.mean(0)))
    expected[(pred.mean(0) == 0) & (ctrl.mean(0) == 0)] = 0.0  # a gene the decoder's ReLU silences on both sides
    rows = table[table["cell_type"] == kind]
    np.testing.assert_allclose(rows["model_log2fc"], expected, atol=1e-5)
    observed = np.asarray(data.obsm["X_hvg"], dtype=np.float64)
    is_burn = ((data.obs["condition"] == "burn") & (data.obs["cell_types_simple_short"] == kind)).to_numpy()
    split = pd.read_csv(run / "split.csv", dtype=str).set_index("obs_name")["split"].reindex(data.obs_names)
    burn = observed[is_burn & (split == "test").to_numpy()]
    np.testing.assert_allclose(rows["observed_log2fc"],
                               np.log2(np.expm1(burn.mean(0)) / np.expm1(controls.obsm["X_hvg"].mean(0))), atol=1e-6)
