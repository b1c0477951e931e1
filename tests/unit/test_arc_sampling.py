"""``--sampling arc`` reproduces arc-state 0.11.1's ``state tx infer`` on the committed folders and file (its
predictions are committed: tests/fixtures/arc/make_fixtures.py), and reports what Arc hides."""

import hashlib
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from core.__main__ import main
from core.arc.runtime import load_arc
from core.arc.sampling import predict_arc
from core.errors import DataError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "arc"
FLAGS = dict(embed_key="X_emb", pert_col="drug", control_pert="control", celltype_col="cell_type", batch_col="batch")


@pytest.fixture(scope="module")
def infer_input():
    return ad.read_h5ad(FIXTURES / "infer_input.h5ad")


def _arc(run):
    return ad.read_h5ad(FIXTURES / run / "infer_pred.h5ad")


@pytest.mark.parametrize("run", ["emb_llama", "emb_lora", "emb_gpt2"])
def test_embedding_model_predictions_equal_state_tx_infer(infer_input, run):
    model, folder, _ = load_arc(FIXTURES / run)
    pred = predict_arc(model, folder, infer_input, **FLAGS)
    assert pred.latent.shape == (120, 16) and pred.counts is None and pred.latent_key == "X_emb"
    np.testing.assert_allclose(pred.latent, _arc(run).obsm["X_emb"], atol=1e-5, rtol=0)
    # 2 cell types x 3 labels, 19 or 22 cells each -> two windows of at most 16 per (cell type, label)
    assert pred.n_windows == 12


def test_gene_model_with_arc_clip_equals_state_tx_infer_latent_and_counts(infer_input):
    model, folder, _ = load_arc(FIXTURES / "gene_llama")
    pred = predict_arc(model, folder, infer_input, **FLAGS, clip=True)
    arc = _arc("gene_llama")
    np.testing.assert_allclose(pred.latent, arc.obsm["X_emb"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(pred.counts, arc.obsm["X_hvg"], atol=1e-5, rtol=0)


def test_gene_latent_is_not_clipped_unless_asked(infer_input):
    model, folder, _ = load_arc(FIXTURES / "gene_llama")
    pred = predict_arc(model, folder, infer_input, **FLAGS)
    arc = _arc("gene_llama").obsm["X_emb"]
    inside = (arc > 0) & (arc < 14)
    np.testing.assert_allclose(pred.latent[inside], arc[inside], atol=1e-5, rtol=0)
    assert (pred.latent[arc == 0] < 0).mean() > 0.9  # what Arc's clip set to 0 was mostly a negative value
    assert any("not clipped" in note for note in pred.notes)


def test_another_seed_draws_other_controls(infer_input):
    model, folder, _ = load_arc(FIXTURES / "emb_llama")
    pred = predict_arc(model, folder, infer_input, **FLAGS, seed=43)
    assert np.abs(pred.latent - _arc("emb_llama").obsm["X_emb"]).max() > 1e-2


def test_unseen_perturbation_is_an_error_not_the_control(infer_input):
    model, folder, _ = load_arc(FIXTURES / "emb_llama")
    relabelled = infer_input.copy()
    relabelled.obs["drug"] = relabelled.obs["drug"].astype(str).replace({"drugY": "burn"})
    with pytest.raises(DataError, match=r"\['burn'\] are not in the model's pert_onehot_map"):
        predict_arc(model, folder, relabelled, **FLAGS)


def test_unknown_batches_are_reported(infer_input):
    model, folder, _ = load_arc(FIXTURES / "emb_llama")
    pred = predict_arc(model, folder, infer_input, **FLAGS)
    expected = int((infer_input.obs["batch"].astype(str) == "b9").sum())
    assert any(f"['b9'] ({expected} of 120 cells)" in note for note in pred.notes)


def test_cli_with_state_tx_infer_flags_writes_arcs_keys_and_leaves_the_input(tmp_path, capsys):
    source = FIXTURES / "infer_input.h5ad"
    before = hashlib.sha256(source.read_bytes()).hexdigest()
    out = tmp_path / "preds.h5ad"
    rc = main(["infer", "--model-dir", str(FIXTURES / "gene_llama"), "--checkpoint",
               str(FIXTURES / "gene_llama" / "checkpoints" / "final.ckpt"), "--adata", str(source),
               "--embed-key", "X_emb", "--pert-col", "drug", "--control-pert", "control", "--celltype-col",
               "cell_type", "--batch-col", "batch", "--output", str(out), "--sampling", "arc", "--arc-clip"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "42 tensors loaded, 1 dropped" in printed and "wrote" in printed
    written, arc = ad.read_h5ad(out), _arc("gene_llama")
    np.testing.assert_allclose(written.obsm["X_emb"], arc.obsm["X_emb"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(written.obsm["X_hvg"], arc.obsm["X_hvg"], atol=1e-5, rtol=0)
    assert list(written.obs_names) == list(ad.read_h5ad(source).obs_names)
    assert hashlib.sha256(source.read_bytes()).hexdigest() == before


def test_cli_our_sampling_on_an_arc_folder_predicts_from_control_cells(tmp_path, capsys):
    out = tmp_path / "ours.h5ad"
    rc = main(["infer", "--model-dir", str(FIXTURES / "emb_llama"), "--adata", str(FIXTURES / "infer_input.h5ad"),
               "--output", str(out), "--quiet"])
    assert rc == 0
    written = ad.read_h5ad(out)
    n_controls = int((ad.read_h5ad(FIXTURES / "infer_input.h5ad").obs["drug"] == "control").sum())
    assert written.n_obs == 2 * n_controls  # one row per (control cell, drugX | drugY)
    np.testing.assert_allclose(written.obsm["delta_z"] + 0, written.obsm["X_pred"] - ad.read_h5ad(
        FIXTURES / "infer_input.h5ad")[written.obs["matched_control"]].obsm["X_emb"], atol=1e-6)
    assert "batches ['b9'] were not seen in training" in capsys.readouterr().out


def test_cli_our_sampling_imports_the_arc_checkpoint_once(tmp_path, monkeypatch):
    # The load report is printed before predicting; the model it describes is the one that predicts.
    import core.arc.runtime as runtime

    reads = []
    real = runtime.import_arc_model

    def counting(folder):
        reads.append(folder.checkpoint)
        return real(folder)

    monkeypatch.setattr(runtime, "import_arc_model", counting)
    rc = main(["infer", "--model-dir", str(FIXTURES / "emb_llama"), "--adata", str(FIXTURES / "infer_input.h5ad"),
               "--output", str(tmp_path / "ours.h5ad"), "--quiet"])
    assert rc == 0 and len(reads) == 1
