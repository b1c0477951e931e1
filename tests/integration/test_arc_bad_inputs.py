"""Broken Arc folders and data that does not fit them: one line saying what is wrong and what the folder
expects; nothing is partially loaded."""

import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

from core.__main__ import main
from core.arc.folder import read_arc_folder
from core.arc.importer import import_arc_model
from core.arc.runtime import load_arc
from core.arc.safe_load import load_torch_file, plain
from core.arc.sampling import predict_arc
from core.errors import CheckpointError, DataError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "arc"


def _copy(tmp_path, run="emb_llama") -> Path:
    return Path(shutil.copytree(FIXTURES / run, tmp_path / run))


def _edit_checkpoint(folder: Path, edit) -> None:
    path = folder / "checkpoints" / "final.ckpt"
    ckpt = plain(load_torch_file(path))
    edit(ckpt)
    torch.save(ckpt, path)


@pytest.mark.parametrize("missing", ["pert_onehot_map.pt", "var_dims.pkl", "config.yaml"])
def test_a_missing_required_file_names_it_and_what_the_folder_holds(tmp_path, missing):
    folder = _copy(tmp_path)
    (folder / missing).unlink()
    with pytest.raises(CheckpointError, match=f"has no {missing}; an Arc State run folder holds config.yaml"):
        read_arc_folder(folder)


def test_a_batch_encoder_without_its_batch_map_is_refused(tmp_path):
    folder = _copy(tmp_path)
    (folder / "batch_onehot_map.torch").unlink()
    with pytest.raises(CheckpointError, match="no batch_onehot_map.torch .* batch encoder of 3 batches"):
        read_arc_folder(folder)


def test_no_checkpoint_says_where_it_looked(tmp_path):
    folder = _copy(tmp_path)
    (folder / "checkpoints" / "final.ckpt").unlink()
    with pytest.raises(CheckpointError, match="has no checkpoints/final.ckpt .* --checkpoint"):
        read_arc_folder(folder)


def test_a_tensor_shape_that_does_not_match_the_hyper_parameters_is_named(tmp_path):
    folder = _copy(tmp_path)
    _edit_checkpoint(folder, lambda c: c["hyper_parameters"].update(input_dim=20))
    with pytest.raises(CheckpointError, match=r"basal_encoder.0.weight has shape \(32, 16\) but its hyper-parameters "
                                              r"\(input_dim=20.*\) give \(32, 20\)"):
        import_arc_model(read_arc_folder(folder))


def test_a_tensor_the_hyper_parameters_do_not_describe_is_refused(tmp_path):
    folder = _copy(tmp_path)
    _edit_checkpoint(folder, lambda c: c["state_dict"].update({"project_out.6.weight": torch.zeros(16, 32)}))
    with pytest.raises(CheckpointError, match="project_out.6.weight is not part of the model"):
        import_arc_model(read_arc_folder(folder))


def test_a_missing_tensor_is_refused(tmp_path):
    folder = _copy(tmp_path)
    _edit_checkpoint(folder, lambda c: c["state_dict"].pop("transformer_backbone.norm.weight"))
    with pytest.raises(CheckpointError, match="has no tensor transformer_backbone.norm.weight"):
        import_arc_model(read_arc_folder(folder))


def test_hyper_parameters_without_embed_key_are_refused(tmp_path):
    folder = _copy(tmp_path)
    _edit_checkpoint(folder, lambda c: c["hyper_parameters"].pop("embed_key"))
    with pytest.raises(CheckpointError, match="hyper_parameters lack 'embed_key'"):
        import_arc_model(read_arc_folder(folder))


def test_a_map_that_is_not_one_hot_is_refused(tmp_path):
    folder = _copy(tmp_path)
    torch.save({"control": torch.tensor([1.0, 0, 0]), "drugX": torch.tensor([0.5, 0.5, 0])},
               folder / "pert_onehot_map.pt")
    with pytest.raises(CheckpointError, match="'drugX' is not a one-hot row"):
        read_arc_folder(folder)


def test_an_embedding_of_another_dimension_says_both_dimensions():
    # the case users hit: SE-600M's 2058-d embedding given to ST-Tahoe's 2000-d input
    model, folder, _ = load_arc(FIXTURES / "emb_llama")
    data = ad.read_h5ad(FIXTURES / "infer_input.h5ad")
    data.obsm["X_se"] = np.zeros((data.n_obs, 20), np.float32)
    with pytest.raises(CheckpointError, match=r"obsm\['X_se'\] has 20 dimensions but the model takes 16-d input "
                                              r"\(input_dim, trained on 'X_emb'\)"):
        predict_arc(model, folder, data, embed_key="X_se", pert_col="drug", control_pert="control",
                    celltype_col="cell_type", batch_col="batch")


def test_cli_bad_arc_folder_is_one_line_exit_2(tmp_path, capsys):
    folder = _copy(tmp_path)
    (folder / "pert_onehot_map.pt").unlink()
    rc = main(["infer", "--model-dir", str(folder), "--adata", str(FIXTURES / "infer_input.h5ad"), "--output",
               str(tmp_path / "out.h5ad"), "--sampling", "arc"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1 and "pert_onehot_map.pt" in err
    assert not (tmp_path / "out.h5ad").exists()


def test_cli_arc_sampling_on_a_folder_that_is_not_arcs_is_refused(tmp_path, capsys):
    rc = main(["infer", "--model-dir", str(tmp_path), "--adata", str(FIXTURES / "infer_input.h5ad"), "--output",
               str(tmp_path / "out.h5ad"), "--sampling", "arc"])
    assert rc == 2 and "needs an Arc State folder" in capsys.readouterr().err


def test_cli_arc_sampling_refuses_flags_it_would_ignore(tmp_path, capsys):
    rc = main(["infer", "--model-dir", str(FIXTURES / "emb_llama"), "--adata", str(FIXTURES / "infer_input.h5ad"),
               "--output", str(tmp_path / "out.h5ad"), "--sampling", "arc", "--perturbation", "drugX"])
    assert rc == 2 and "--perturbation do not apply" in capsys.readouterr().err


def test_fine_tuning_on_an_embedding_of_another_dimension_is_refused_before_training():
    from core.arc.finetune import build_for_training_any as build_for_training
    from core.config import load_config

    cfg = load_config(overrides=[f"model.init_from={FIXTURES / 'emb_llama'}"])
    with pytest.raises(CheckpointError, match="takes 16-d input .* but the data's embedding has 2058 dimensions"):
        build_for_training(cfg, 2058, {"burn": 0, "sham": 1}, "sham", {})


def test_an_hvg_model_given_no_hvg_matrix_says_what_it_reads(tmp_path):
    # an ST-HVG-style folder: embed_key X_hvg (the relu rule and the input both follow it)
    folder = _copy(tmp_path, "gene_llama")
    _edit_checkpoint(folder, lambda c: c["hyper_parameters"].update(embed_key="X_hvg"))
    model, arc_folder, _ = load_arc(folder)
    data = ad.read_h5ad(FIXTURES / "infer_input.h5ad")
    del data.obsm["X_hvg"]
    with pytest.raises(DataError, match=r"obsm\['X_hvg'\] is not in the data .* this model reads the HVG matrix: "
                                        r"put the 16 highly variable genes"):
        predict_arc(model, arc_folder, data, embed_key="X_hvg", pert_col="drug", control_pert="control")
    assert model.latent_relu  # Arc applies its output ReLU to X_hvg models even with a gene decoder
