"""A fine-tuned Arc gene-space model is evaluated in gene space through its own gene decoder: the predicted log2
fold changes are those of its decoder's output for the predictions and their controls, computed here directly."""

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
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


def _energy(x, y):
    """E|X-Y| - 1/2 E|X-X'| - 1/2 E|Y-Y'| over all pairs, by hand (scipy's distances)."""
    from scipy.spatial.distance import cdist

    return cdist(x, y).mean() - 0.5 * cdist(x, x).mean() - 0.5 * cdist(y, y).mean()


def test_decoder_loss_is_the_energy_distance_of_decoded_predictions_to_the_hvg_targets():
    from core.arc.runtime import load_arc
    from core.config import Config
    from core.training.module import STModule

    model, _, _ = load_arc(FIXTURES / "gene_llama")
    cfg = Config()
    cfg.model.kwargs.decoder_weight = 0.5
    module = STModule(model, {"config": cfg.to_dict()})
    data = ad.read_h5ad(FIXTURES / "infer_input.h5ad")
    controls = np.flatnonzero(data.obs["drug"].to_numpy() == "control")[:8]
    treated = np.flatnonzero(data.obs["drug"].to_numpy() == "drugX")[:8]
    batch = {"z_control": torch.as_tensor(data.obsm["X_emb"][controls])[None],
             "z_perturbed": torch.as_tensor(data.obsm["X_emb"][treated])[None], "pert": torch.tensor([1]),
             "batch_idx": torch.zeros(1, 8, dtype=torch.long),
             "genes_perturbed": torch.as_tensor(data.obsm["X_hvg"][treated])[None]}
    total, named, _ = module.losses(batch, 1)
    with torch.no_grad():
        counts = model.decode_genes(model(batch["z_control"], batch["pert"], batch["batch_idx"]))[0].double().numpy()
    assert float(named["decoder_loss"]) == pytest.approx(_energy(counts, data.obsm["X_hvg"][treated]), abs=2e-4)
    assert float(total) == pytest.approx(float(named["dist_loss"]) + 0.5 * float(named["decoder_loss"]), rel=1e-6)
    assert float(named["decoder_loss"]) > 0.01  # not trivially zero


def test_gene_space_fine_tune_trains_the_decoder_and_refuses_data_without_hvg(tmp_path, capsys):
    common = [f"model.init_from={FIXTURES / 'gene_llama'}", "data.kwargs.embed_key=X_state_baseline",
              "data.kwargs.pert_col=condition", "data.kwargs.control_pert=sham",
              "data.kwargs.cell_type_key=cell_types_simple_short", "data.kwargs.split=fraction",
              "model.kwargs.cell_set_len=8", "training.max_steps=2", "training.accelerator=cpu",
              f"output_dir={tmp_path}"]
    assert main(["train", *common, f"data.kwargs.path={FIXTURES / 'burn_sham_small.h5ad'}", "name=dec"]) == 0
    metrics = pd.read_json(tmp_path / "dec" / "metrics.jsonl", lines=True)
    assert metrics["decoder_loss"].notna().sum() == 2 and (metrics["decoder_loss"].dropna() > 0).all()
    assert metrics["val_decoder_loss"].notna().any()
    notes = json.loads((tmp_path / "dec" / "load_report.json").read_text())["notes"]
    assert any("Arc's decoder loss (weight 1.0) against obsm['X_hvg'] (24 genes)" in n for n in notes)
    from core.arc.safe_load import load_torch_file

    arc = load_torch_file(FIXTURES / "gene_llama" / "checkpoints" / "final.ckpt")["state_dict"]
    tuned, _, _ = load_model(tmp_path / "dec" / "checkpoints" / "final.ckpt", "cpu")
    assert not torch.equal(tuned.gene_decoder.decoder[0].weight, arc["gene_decoder.decoder.0.weight"])

    frozen = main(["train", *common, f"data.kwargs.path={FIXTURES / 'burn_sham_small.h5ad'}", "name=frozen",
                   "model.kwargs.decoder_weight=0"])
    assert frozen == 0
    tuned, _, _ = load_model(tmp_path / "frozen" / "checkpoints" / "final.ckpt", "cpu")
    assert torch.equal(tuned.gene_decoder.decoder[0].weight, arc["gene_decoder.decoder.0.weight"])

    no_hvg = ad.read_h5ad(FIXTURES / "burn_sham_small.h5ad")
    del no_hvg.obsm["X_hvg"]
    no_hvg.write_h5ad(tmp_path / "no_hvg.h5ad")
    capsys.readouterr()
    assert main(["train", *common, f"data.kwargs.path={tmp_path / 'no_hvg.h5ad'}", "name=nohvg"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "obsm['X_hvg'], which this data set lacks" in err
