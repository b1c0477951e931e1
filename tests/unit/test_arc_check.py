"""``python -m core arc DIR --adata FILE``: what an Arc folder expects, and a check of the data against it."""

from pathlib import Path

import anndata as ad
import numpy as np

from core.__main__ import main
from core.arc.check import check_data
from core.arc.folder import read_arc_folder

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "arc"
BURN_SHAM = dict(embed_key="X_state_baseline", pert_col="condition", control_pert="sham", batch_col="mouse_id")


def test_burn_sham_data_against_the_fixture_folder():
    findings = check_data(read_arc_folder(FIXTURES / "emb_llama"), ad.read_h5ad(FIXTURES / "burn_sham_small.h5ad"),
                          **BURN_SHAM)
    assert findings == [
        ("ok", "obsm['X_state_baseline'] has 16 dimensions; the model takes 16"),
        ("ok", "control 'sham' (72 cells) takes Arc's control 'control'"),
        ("note", "perturbations new to the model: ['burn']; fine-tuning gives each a new one-hot column, inference "
                 "refuses them until then"),
        ("note", "batches new to the model in 'mouse_id': ['m1', 'm2', 'm3', 'm4']")]


def test_the_folders_own_file_passes_with_its_default_keys():
    findings = check_data(read_arc_folder(FIXTURES / "gene_llama"), ad.read_h5ad(FIXTURES / "infer_input.h5ad"))
    assert [level for level, _ in findings] == ["ok", "ok", "ok", "note"]
    assert findings[2] == ("ok", "perturbations the model knows: ['drugX', 'drugY']")
    assert findings[3] == ("note", "batches new to the model in 'batch': ['b9']")


def test_cli_exits_2_when_the_embedding_has_another_dimension(tmp_path, capsys):
    data = ad.read_h5ad(FIXTURES / "burn_sham_small.h5ad")
    data.obsm["X_se"] = np.zeros((data.n_obs, 2058), np.float32)
    data.write_h5ad(tmp_path / "se.h5ad")
    rc = main(["arc", str(FIXTURES / "emb_llama"), "--adata", str(tmp_path / "se.h5ad"), "--embed-key", "X_se",
               "--pert-col", "condition", "--control-pert", "sham"])
    out = capsys.readouterr().out
    assert rc == 2 and "error: obsm['X_se'] has 2058 dimensions; the model takes 16" in out
    assert "32 tensors loaded, 1 dropped" in out and "  loaded " not in out


def test_only_arc_folders_and_checkpoints_inside_them_are_taken_for_arc(tmp_path, monkeypatch):
    from core.arc.runtime import find_arc_folder

    arc = FIXTURES / "emb_llama"
    assert find_arc_folder(arc) == (arc, None)
    assert find_arc_folder(arc / "checkpoints" / "final.ckpt") == (arc, arc / "checkpoints" / "final.ckpt")
    monkeypatch.chdir(arc)  # a name that is not a file ("demo") never means the folder one stands in
    assert find_arc_folder("demo") is None and find_arc_folder(tmp_path) is None
