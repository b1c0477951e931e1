"""``python -m core export RUN --format arc``: a run fine-tuned from an Arc folder, written as an Arc folder
that predicts what the run predicts (LoRA merged); runs Arc cannot express are refused in one line."""

import os
import shutil
import subprocess
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

from core.__main__ import main
from core.arc.runtime import load_arc
from core.infer import load_model

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "arc"
DATA = FIXTURES / "burn_sham_small.h5ad"
COLUMNS = ["data.kwargs.embed_key=X_state_baseline", "data.kwargs.pert_col=condition", "data.kwargs.control_pert=sham",
           "data.kwargs.cell_type_key=cell_types_simple_short", "data.kwargs.batch_col=mouse_id"]
INFER_FLAGS = ["--adata", str(DATA), "--embed-key", "X_state_baseline", "--pert-col", "condition", "--control-pert",
               "sham", "--celltype-col", "cell_types_simple_short", "--batch-col", "mouse_id"]


def _train(root: Path, name: str, *extra) -> Path:
    # the 144-cell fixture has 2 mice per condition: holding one out leaves too few cells per type for a set
    rc = main(["train", f"data.kwargs.path={DATA}", *COLUMNS, "training.max_steps=2", "training.accelerator=cpu",
               "data.kwargs.split=fraction", "model.kwargs.cell_set_len=8",
               f"output_dir={root}", f"name={name}", *extra])
    assert rc == 0
    return root / name


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return _train(root, "ft_lora", f"model.init_from={FIXTURES / 'emb_llama'}", "model.kwargs.use_batch=true",
                  "model.kwargs.lora.r=4", "training.learning_rate=0.01")


@pytest.fixture(scope="module")
def exported(lora_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "arc"
    assert main(["export", str(lora_run), "--format", "arc", "--out", str(out)]) == 0
    return out


def test_exported_folder_predicts_what_the_fine_tuned_run_predicts(lora_run, exported):
    run_model, _, hp = load_model(lora_run, "cpu")
    lora_b = [p for n, p in run_model.named_parameters() if "lora_B" in n]
    assert lora_b and max(float(p.abs().max()) for p in lora_b) > 0  # training moved LoRA: the merge matters
    arc_model, folder, report = load_arc(exported)
    assert report["merged"] == {} and len(report["loaded"]) == 32  # plain Arc tensors, LoRA already merged
    z = torch.from_numpy(np.asarray(ad.read_h5ad(DATA).obsm["X_state_baseline"][:8]))[None]
    for label in ("burn", "sham"):
        with torch.no_grad():
            ours = run_model(z, torch.tensor([hp["pert_map"][label]]))
            arc = arc_model(z, torch.tensor([folder.pert_map[label]]))
        assert torch.allclose(ours, arc, atol=1e-6, rtol=0), label
    # pretrained labels keep their columns; burn has the new one; Arc's own control label gave way to sham
    assert folder.pert_map == {"burn": 3, "drugX": 1, "drugY": 2, "sham": 0} and folder.control == "sham"


def test_exported_checkpoint_holds_plain_values_only(exported):
    ckpt = torch.load(exported / "checkpoints" / "final.ckpt", weights_only=True)  # no numpy globals needed
    assert ckpt["hyper_parameters"]["pert_dim"] == 4
    assert ckpt["state_dict"]["transformer_backbone.embed_tokens.weight"].shape == (8, 32)
    assert not any("lora_" in k or "base_layer" in k for k in ckpt["state_dict"])


def test_mhc_run_is_refused_in_one_line(tmp_path, capsys):
    run = _train(tmp_path, "ft_mhc", f"model.init_from={FIXTURES / 'emb_llama'}", "model.kwargs.use_mhc=true")
    rc = main(["export", str(run), "--format", "arc", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "uses mHC, which Arc State's architecture cannot express" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_our_own_st_model_is_refused_and_a_non_empty_out_is_not_overwritten(lora_run, tmp_path, capsys):
    run = _train(tmp_path, "ours", "model.kwargs.lora.enable=false")
    assert main(["export", str(run), "--format", "arc", "--out", str(tmp_path / "a")]) == 2
    assert "our own ST model" in capsys.readouterr().err
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    assert main(["export", str(lora_run), "--format", "arc", "--out", str(taken)]) == 2
    assert "not an empty folder" in capsys.readouterr().err and (taken / "keep.txt").read_text() == "mine"


ARC_STATE = os.environ.get("ARC_STATE_BIN") or shutil.which("state")


@pytest.mark.skipif(ARC_STATE is None, reason="arc-state is not installed (set ARC_STATE_BIN to its state command)")
def test_arc_states_own_infer_runs_the_exported_folder_like_our_arc_sampling(exported, tmp_path):
    subprocess.run([ARC_STATE, "tx", "infer", "--model-dir", str(exported), *INFER_FLAGS, "--output",
                    str(tmp_path / "arc.h5ad"), "--quiet"], check=True, capture_output=True)
    assert main(["infer", "--model-dir", str(exported), *INFER_FLAGS, "--output", str(tmp_path / "ours.h5ad"),
                 "--sampling", "arc", "--quiet"]) == 0
    arc, ours = ad.read_h5ad(tmp_path / "arc.h5ad"), ad.read_h5ad(tmp_path / "ours.h5ad")
    np.testing.assert_allclose(ours.obsm["X_state_baseline"], arc.obsm["X_state_baseline"], atol=1e-6, rtol=0)
