"""A newcomer's file is not silently mis-read: no guess without evidence, warnings when the chosen condition
does not look like one, and a base model that says when the data cannot be in its latent space."""

import numpy as np
import pandas as pd
import pytest

from core.data.fingerprint import embedding_fingerprint, same_space_warnings
from core.data.mapping import ColumnMapping, guess_mapping
from core.data.validate import validate


@pytest.fixture(scope="module")
def pbmc():
    """scanpy's bundled PBMC (700 cells, no download): cell types in 'bulk_labels', no condition column."""
    import scanpy as sc

    return sc.datasets.pbmc68k_reduced()


def test_a_file_without_a_condition_column_gets_no_condition_or_cell_type_guess(pbmc):
    guess = guess_mapping(pbmc)
    assert guess.pert_col == "" and guess.control_pert == ""
    assert guess.cell_type_key == ""  # 'bulk_labels', 'phase', 'louvain' are not named like cell types
    assert guess.embed_key == "X_pca"
    report = validate(pbmc, guess)
    assert not report.ok and any("no perturbation column chosen" in e for e in report.errors)


def test_a_condition_column_with_a_control_value_is_still_guessed(pbmc):
    a = pbmc.copy()
    a.obs["treatment"] = pd.Categorical(np.where(np.arange(a.n_obs) % 2, "stim", "ctrl"))
    a.obs["cell_type"] = a.obs["bulk_labels"]
    guess = guess_mapping(a)
    assert (guess.pert_col, guess.control_pert, guess.cell_type_key) == ("treatment", "ctrl", "cell_type")


def test_cell_types_taken_as_the_condition_warn_about_many_levels_and_an_odd_control(pbmc):
    mapping = ColumnMapping("bulk_labels", "CD4+/CD25 T Reg", "phase", None, "X_pca")
    report = validate(pbmc, mapping)
    n_levels = pbmc.obs["bulk_labels"].nunique()
    assert any(f"'bulk_labels' has {n_levels} values" in w for w in report.warnings)
    assert any("'CD4+/CD25 T Reg' does not look like a control" in w for w in report.warnings)


def test_a_real_condition_column_gets_neither_warning(demo_adata):
    report = validate(demo_adata, ColumnMapping("condition", "sham", "cell_types_simple_short", "mouse_id", "X_pca"))
    assert not any("values: a condition column" in w or "does not look like a control" in w
                   for w in report.warnings)


def test_the_demo_data_is_in_the_atlas_space_and_pbmc_is_not(demo_adata, atlas_adata, pbmc):
    base = embedding_fingerprint(atlas_adata, "X_pca")
    assert base["dim"] == 50 and base["n_genes"] == demo_adata.n_vars and base["loadings_hash"]
    assert same_space_warnings(base, embedding_fingerprint(demo_adata, "X_pca")) == []
    [warning] = same_space_warnings(base, embedding_fingerprint(pbmc, "X_pca"))
    used = int((np.abs(pbmc.varm["PCs"]).sum(1) > 0).sum())
    assert f"0 of your {used:,} genes are among the base's {demo_adata.n_vars:,}" in warning


def test_the_same_genes_with_other_loadings_are_another_space(demo_adata):
    base = embedding_fingerprint(demo_adata, "X_pca")
    other = demo_adata[:200].copy()
    other.varm["PCs"] = other.varm["PCs"][:, ::-1].copy()  # same genes, components reordered
    [warning] = same_space_warnings(base, embedding_fingerprint(other, "X_pca"))
    assert "the same genes but other loadings" in warning


def test_an_embedding_without_loadings_on_the_base_genes_is_flagged_as_unproven(demo_adata):
    base = embedding_fingerprint(demo_adata, "X_pca")
    other = demo_adata[:200].copy()
    other.obsm["X_emb"] = other.obsm["X_pca"]
    [warning] = same_space_warnings(base, embedding_fingerprint(other, "X_emb"))
    assert "has the genes of the base's obsm['X_pca'] but no loadings" in warning


def test_a_base_without_a_fingerprint_says_it_cannot_check(demo_adata):
    [warning] = same_space_warnings({"dim": 50}, embedding_fingerprint(demo_adata, "X_pca"))
    assert "older checkpoint" in warning


def test_validation_against_a_base_reports_its_dimension_and_space(demo_adata, pbmc):
    base = embedding_fingerprint(demo_adata, "X_pca")
    mapping = ColumnMapping("bulk_labels", "CD4+/CD25 T Reg", "phase", None, "X_pca")
    report = validate(pbmc, mapping, base_embedding=base)
    assert any("is not the space the base was trained in" in w for w in report.warnings)
    small = pbmc.copy()
    small.obsm["X_pca"] = small.obsm["X_pca"][:, :30]
    small.varm["PCs"] = small.varm["PCs"][:, :30]
    report = validate(small, mapping, base_embedding=base)
    assert any("has 30 dimensions but the base model expects 50" in e for e in report.errors)


def test_a_base_checkpoint_is_described_by_the_json_beside_it_without_reading_it(tmp_path, demo_adata):
    import json

    from core.training.demo_base import base_embedding, embedding_sidecar

    ckpt = tmp_path / "my-base" / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"not a torch file: reading it would fail")
    fingerprint = embedding_fingerprint(demo_adata, "X_pca")
    assert embedding_sidecar(ckpt) == tmp_path / "my-base" / "embedding.json"
    embedding_sidecar(ckpt).write_text(json.dumps(fingerprint))
    assert base_embedding(str(ckpt)) == fingerprint
    assert base_embedding(None) is None


def test_the_demo_base_is_described_by_the_atlas_it_is_pretrained_on(atlas_adata):
    from core.training.demo_base import base_embedding

    described = base_embedding("demo")
    expected = embedding_fingerprint(atlas_adata, "X_pca")
    assert {k: described[k] for k in ("key", "dim", "gene_hash", "loadings_hash")} == \
        {k: expected[k] for k in ("key", "dim", "gene_hash", "loadings_hash")}
