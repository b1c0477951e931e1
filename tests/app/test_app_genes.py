"""The Inspect page's Genes tab shows what the evaluation computed (core/evaluation/genes.py on a hand-built
PCA data set with a known effect), and says why when a run has no decoder to genes."""

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml
from streamlit.testing.v1 import AppTest

from core.evaluation.gene_decoders import pca_decoder
from core.evaluation.genes import gene_evaluation, no_decoder_summary
from core.evaluation.report import json_ready, write_evaluation
from core.runs import RunWriter

APP = "../../app/main.py"
GENES = 30


def pca_data(rng):
    """Two cell types, control and burn; burn raises genes g00-g04 in 'Basal' only. X log1p counts, a full PCA."""
    blocks, obs = [], []
    for kind in ("Basal", "Fibro"):
        for condition in ("sham", "burn"):
            rate = np.full(GENES, 4.0)
            if condition == "burn" and kind == "Basal":
                rate[:5] = 16.0
            blocks.append(np.log1p(rng.poisson(rate, (40, GENES))))
            obs += [(kind, condition)] * 40
    x = np.concatenate(blocks)
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    adata = ad.AnnData(x.astype(np.float32), obs=pd.DataFrame(obs, columns=["cell_type", "condition"],
                                                              index=[f"c{i}" for i in range(len(x))]),
                       var=pd.DataFrame({"pca_mean": mean}, index=[f"g{j:02d}" for j in range(GENES)]))
    adata.varm["PCs"] = vt[:10].T
    adata.obsm["X_pca"] = (x - mean) @ vt[:10].T
    return adata


def write_run(root, name, genes, table):
    path = root / name
    with RunWriter(path) as writer:
        writer.write_status("completed", step=3)
    (path / "config.yaml").write_text(yaml.safe_dump({"run": {"name": name}, "training": {"seed": 0},
                                                      "data": {"kwargs": {"split": "fraction"}}}))
    summary = {"overall": {}, "per_cell_type": {}, "genes": genes, "design": {}, "final": {"same_as_best": True}}
    write_evaluation(path / "eval", json_ready(summary), pd.DataFrame({"cell_type": []}), gene_table=table)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    adata = pca_data(np.random.default_rng(0))
    decoder, _ = pca_decoder(adata, "X_pca")
    z, kind = adata.obsm["X_pca"], adata.obs["cell_type"].to_numpy()
    burn = adata.obs["condition"].to_numpy() == "burn"
    groups = []
    for cell_type in ("Basal", "Fibro"):
        control = np.flatnonzero(~burn & (kind == cell_type))
        real = np.flatnonzero(burn & (kind == cell_type))
        # the "model" predicts the true burn effect for Basal: the real cells' latent shift
        shift = z[real].mean(0) - z[control].mean(0)
        groups.append({"label": cell_type, "perturbation": "burn", "cell_type": cell_type,
                       "z_pred": z[control] + shift, "control_rows": control, "real_rows": real,
                       "train_rows": [], "train_control_rows": []})
    genes, table = gene_evaluation(decoder, adata, z, groups, top_k=5)
    write_run(root, "with-genes", genes, table)
    write_run(root, "no-decoder", no_decoder_summary("no decoder to genes: obsm['X_state'] is not a PCA"), None)
    return root, genes


def _open(root, run, monkeypatch):
    monkeypatch.setenv("ST_RUNS_DIR", str(root))
    logging.getLogger("app").disabled = True
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.session_state["selected_run"] = run
    at.session_state["inspect_tab"] = "Genes"
    at.switch_page("views/inspect.py").run()
    assert not at.exception and not at.error
    return at


def test_genes_tab_shows_the_scores_scatter_and_top_genes_of_the_evaluation(runs, monkeypatch):
    root, genes = runs
    at = _open(root, "with-genes", monkeypatch)
    overall = next(t.value for t in at.dataframe if "top-5 DE overlap" in t.value.columns)
    assert overall.loc["model", "top-5 DE overlap"] == pytest.approx(genes["overall"]["model"]["overlap_at_k"])
    top = next(t.value for t in at.dataframe if "observed · up" in t.value.columns)
    # Basal (the first cell type) is where burn raised g00-g04: those are its observed and predicted top up genes
    assert set(top["observed · up"][:5]) == {f"g{j:02d}" for j in range(5)}
    assert set(top["model · up"][:5]) == {f"g{j:02d}" for j in range(5)}
    assert genes["per_cell_type"]["Basal"]["model"]["overlap_at_k"] == 1.0
    assert any("varm" in c.value for c in at.caption)  # the decoder is named
    titles = [c.proto.spec for c in at.get("plotly_chart")]
    assert len(titles) == 2 and any("predicted vs observed log2 fold change" in t for t in titles)
    at.selectbox(key="genes_group").set_value("Fibro").run()
    assert not at.exception and not at.error


def test_a_run_without_a_decoder_says_why_instead_of_showing_numbers(runs, monkeypatch):
    root, _ = runs
    at = _open(root, "no-decoder", monkeypatch)
    assert any("No gene-space results" in i.value and "X\\_state" in i.value for i in at.info)
    assert not at.get("plotly_chart")
