"""Gene-space DE and its top-k overlap reproduce cell-eval 0.8.2 (reference values it computed itself:
tests/fixtures/genes/make_reference.py), and the PCA decoder inverts a real scanpy PCA."""

import json
import math
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from core.evaluation.gene_de import de_overlap, differential_expression, ranked_de_genes, top_genes
from core.evaluation.gene_decoders import gene_decoder, observed_expression, pca_decoder

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "genes"
PERTS = ("burnA", "burnB")


@pytest.fixture(scope="module")
def reference():
    return json.loads((FIXTURES / "reference.json").read_text())


@pytest.fixture(scope="module")
def ours():
    out = {}
    for name in ("real", "pred"):
        adata = ad.read_h5ad(FIXTURES / f"{name}.h5ad")
        label = adata.obs["condition"].astype(str).to_numpy()
        for pert in PERTS:
            out[name, pert] = differential_expression(adata.X[label == pert], adata.X[label == "sham"])
        out[name, "genes"] = list(adata.var_names)
    return out


@pytest.mark.parametrize("name", ["real", "pred"])
@pytest.mark.parametrize("pert", PERTS)
def test_fold_changes_p_values_and_fdr_equal_pdex_as_cell_eval_runs_it(reference, ours, name, pert):
    theirs = reference["de"][f"{name}/{pert}"]
    assert theirs["feature"] == ours[name, "genes"]
    de = ours[name, pert]
    # pdex computes the means in float32
    np.testing.assert_allclose(de.log2_fold_change, theirs["log2_fold_change"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(de.p_value, theirs["p_value"], atol=1e-12, rtol=1e-9)
    np.testing.assert_allclose(de.fdr, theirs["fdr"], atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize("k", [None, 5, 10, 20])
def test_top_k_overlap_equals_cell_eval_overlap_at_k(reference, ours, k):
    for pert in PERTS:
        value = de_overlap(ours["real", pert], ours["pred", pert], k)
        assert value == pytest.approx(reference["overlap_at_k"][str(k)][pert], abs=1e-12)
    # the values are not trivial: some genes are missed, and k changes the answer
    assert reference["overlap_at_k"]["5"]["burnA"] == 0.6 and reference["overlap_at_k"]["10"]["burnA"] == 0.8


def test_no_significant_real_gene_is_no_overlap_not_a_wrong_prediction():
    rng = np.random.default_rng(0)
    same = np.log1p(rng.poisson(3.0, (30, 20)).astype(float))
    other = np.log1p(rng.poisson(3.0, (30, 20)).astype(float))
    null = differential_expression(same, other)
    assert not null.significant().any()
    assert math.isnan(de_overlap(null, null, 5))


def test_top_genes_are_significant_and_ordered_by_fold_change(ours):
    de, genes = ours["real", "burnA"], np.array(ours["real", "genes"])
    up, down = top_genes(de, genes, 5, "up"), top_genes(de, genes, 5, "down")
    lfc = dict(zip(genes, de.log2_fold_change))
    assert [lfc[g] for g in up] == sorted((lfc[g] for g in up), reverse=True) and all(lfc[g] > 0 for g in up)
    assert [lfc[g] for g in down] == sorted(lfc[g] for g in down) and all(lfc[g] < 0 for g in down)
    # the data set raised g00-g11 and lowered g12-g19 (make_reference.py)
    assert set(up) <= {f"g{j:02d}" for j in range(12)} and set(down) <= {f"g{j:02d}" for j in range(12, 20)}
    assert set(genes[ranked_de_genes(de)[:5]]) <= set(up) | set(down)


def test_pca_decoder_inverts_scanpy_pca_with_means_from_x():
    import scanpy as sc

    from core.data.io import read_h5ad
    from tests.support import PANCREAS

    adata = read_h5ad(PANCREAS)  # real counts
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    adata.X = np.asarray(adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X, dtype=np.float64)
    sc.pp.highly_variable_genes(adata, n_top_genes=40)
    # every component of the 40 HVGs: decoding must give X back on them
    sc.pp.pca(adata, n_comps=40, mask_var="highly_variable", svd_solver="full")
    decoder, why = pca_decoder(adata, "X_pca")
    assert why == "" and decoder.kind == "pca"
    assert list(decoder.genes) == list(adata.var_names[adata.var["highly_variable"]])  # mask_var genes only
    assert "gene means of X" in decoder.description
    decoded = decoder.decode(adata.obsm["X_pca"])
    observed = observed_expression(decoder, adata, np.arange(adata.n_obs))
    np.testing.assert_allclose(decoded, observed, atol=1e-6 * np.abs(observed).max())
    # with fewer components the decoder is the PCA's projection: its error is what the dropped ones held
    sc.pp.pca(adata, n_comps=10, mask_var="highly_variable", svd_solver="full")
    decoder, _ = pca_decoder(adata, "X_pca")
    residual = observed - decoder.decode(adata.obsm["X_pca"])
    np.testing.assert_allclose(residual @ decoder.loadings, 0, atol=1e-6 * np.abs(observed).max())
    assert np.abs(residual).max() > 0.1


def test_no_decoder_is_said_not_guessed():
    adata = ad.AnnData(np.ones((4, 3), dtype=np.float32))
    adata.obsm["X_state"] = np.zeros((4, 2), dtype=np.float32)
    decoder, why = gene_decoder(adata, "X_state")
    assert decoder is None and "no decoder to genes" in why and "X_state" in why
    adata.obsm["X_pca"] = np.zeros((4, 2), dtype=np.float32)
    decoder, why = gene_decoder(adata, "X_pca")
    assert decoder is None and "varm['PCs'] is missing" in why
    adata.varm["PCs"] = np.zeros((3, 5), dtype=np.float32)
    decoder, why = gene_decoder(adata, "X_pca")
    assert decoder is None and "not this embedding's loadings" in why


def test_arc_gene_space_model_decodes_through_its_own_decoder():
    from core.arc.runtime import load_arc

    arc = Path(__file__).resolve().parents[1] / "fixtures" / "arc"
    model, _, _ = load_arc(arc / "gene_llama")
    adata = ad.read_h5ad(arc / "infer_input.h5ad")
    decoder, why = gene_decoder(adata, "X_emb", model)
    assert why == "" and decoder.kind == "arc" and decoder.observed == "obsm['X_hvg']" and len(decoder.genes) == 24
    import torch

    z = adata.obsm["X_emb"][:5]
    with torch.no_grad():
        direct = model.gene_decoder(torch.as_tensor(z)).numpy()
    np.testing.assert_allclose(decoder.decode(z), direct, atol=1e-6)
    del adata.obsm["X_hvg"]
    decoder, why = gene_decoder(adata, "X_emb", model)
    assert decoder is None and "X_hvg" in why
