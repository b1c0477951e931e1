"""Fine-tuning an imported Arc model: Arc weights first, then LoRA, then mHC; every backbone tensor loads (Arc's
own LoRA path loads none); a new perturbation gets a new one-hot column and pretrained columns keep theirs."""

from pathlib import Path

import torch

from core.__main__ import main
from core.arc.finetune import build_for_training_any as build_for_training
from core.arc.safe_load import load_torch_file
from core.config import load_config
from core.infer import load_model

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "arc"
ARC = FIXTURES / "emb_llama"
ARC_STATE = load_torch_file(ARC / "checkpoints" / "final.ckpt")["state_dict"]
PERT_MAP = {"burn": 0, "drugX": 1, "sham": 2}  # data rows; Arc's columns are control 0, drugX 1, drugY 2
BATCH_MAP = {"b0": 0, "b1": 1, "b2": 2, "m9": 3}


def _build(*overrides):
    cfg = load_config(overrides=[f"model.init_from={ARC}", "model.kwargs.use_batch=true", *overrides])
    return build_for_training(cfg, 16, PERT_MAP, "sham", BATCH_MAP)


def test_every_backbone_tensor_loads_before_lora_wraps_it():
    model, report, notes = _build("model.kwargs.lora.enable=true")
    backbone = [k for k in ARC_STATE if k.startswith("transformer_backbone.") and "embed_tokens" not in k]
    assert len(backbone) == 19 and set(backbone) <= set(report["arc"]["loaded"])
    ours = model.state_dict()
    for key in backbone:
        name = "backbone." + key[len("transformer_backbone."):]
        lora_name = name.replace(".weight", ".base_layer.weight")
        assert torch.equal(ours.get(lora_name, ours.get(name)), ARC_STATE[key]), key
    assert any("19 of them the backbone's" in n for n in notes)
    assert all(not p.requires_grad for n, p in model.backbone.named_parameters() if "lora_" not in n)


def test_pretrained_columns_keep_index_and_weights_and_burn_gets_a_new_column():
    model, report, _ = _build()
    assert model.pert_columns.tolist() == [3, 1, 0]  # burn new, drugX its own, sham -> Arc's control
    w = model.pert_encoder[0].weight.detach()
    assert w.shape == (32, 4) and torch.equal(w[:, :3], ARC_STATE["pert_encoder.0.weight"])
    expected = ARC_STATE["pert_encoder.0.weight"][:, [1, 2]].mean(1)  # mean of the non-control columns
    assert torch.allclose(w[:, 3], expected, atol=1e-7)
    assert report["new_perturbations"] == ["burn"] and model.pert_encoder[0].weight.requires_grad


def test_lora_and_mhc_at_init_predict_what_arc_state_predicts():
    model, _, _ = _build("model.kwargs.lora.enable=true", "model.kwargs.use_mhc=true")
    saved = torch.load(ARC / "forward.pt", weights_only=True)
    with torch.no_grad():
        latent = model.eval()(saved["ctrl_cell_emb"][None], torch.tensor([PERT_MAP["drugX"]]), saved["batch"][None])
    assert torch.allclose(latent[0], saved["preds"], atol=1e-5, rtol=0)
    # a batch Arc never saw starts with no batch term: same output as Arc's batch-free forward would give
    assert torch.count_nonzero(model.batch_embedding.weight[3]) == 0


def test_fine_tuned_run_reloads_with_arcs_frozen_backbone(tmp_path):
    rc = main(["train", f"model.init_from={ARC}", f"data.kwargs.path={FIXTURES / 'burn_sham_small.h5ad'}",
               "data.kwargs.embed_key=X_state_baseline", "data.kwargs.pert_col=condition",
               "data.kwargs.control_pert=sham", "data.kwargs.cell_type_key=cell_types_simple_short",
               "data.kwargs.split=fraction", "model.kwargs.cell_set_len=8",  # a 144-cell fixture, 2 mice a condition
               "model.kwargs.use_mhc=true", "model.kwargs.lora.r=4", "training.max_steps=2",
               "training.accelerator=cpu", f"output_dir={tmp_path}", "name=ft"])
    assert rc == 0
    model, cfg, hp = load_model(tmp_path / "ft", "cpu")
    assert type(model).__name__ == "ArcTransitionModel" and hp["arc_spec"]["pert_dim"] == 4
    assert model.pert_columns.tolist() == [3 if label == "burn" else 0 for label in sorted(hp["pert_map"],
                                                                                        key=hp["pert_map"].get)]
    # the frozen final norm is Arc's trained one, not a fresh all-ones table (Arc's own LoRA fine-tune defect)
    assert torch.equal(model.backbone.norm.weight, ARC_STATE["transformer_backbone.norm.weight"])
    assert not torch.equal(ARC_STATE["transformer_backbone.norm.weight"], torch.ones(32))


def test_velocity_alignment_trains_on_an_imported_model(tmp_path):
    import anndata as ad
    import numpy as np

    from core.runs import read_metrics

    data = ad.read_h5ad(FIXTURES / "burn_sham_small.h5ad")
    data.obsm["velocity_state"] = np.random.default_rng(0).normal(size=(data.n_obs, 16)).astype(np.float32)
    data.obs["velocity_confidence"] = 1.0
    data.write_h5ad(tmp_path / "with_velocity.h5ad")
    rc = main(["train", f"model.init_from={ARC}", f"data.kwargs.path={tmp_path / 'with_velocity.h5ad'}",
               "data.kwargs.embed_key=X_state_baseline", "data.kwargs.pert_col=condition",
               "data.kwargs.control_pert=sham", "data.kwargs.cell_type_key=cell_types_simple_short",
               "data.kwargs.split=fraction", "model.kwargs.cell_set_len=8",  # a 144-cell fixture, 2 mice a condition
               "model.kwargs.use_velocity_alignment=true", "data.kwargs.velocity_key=velocity_state",
               "data.kwargs.confidence_key=velocity_confidence", "model.kwargs.velocity_warmup_steps=1",
               "training.max_steps=2", "training.accelerator=cpu", f"output_dir={tmp_path}", "name=vel"])
    assert rc == 0
    train = read_metrics(tmp_path / "vel").query("split == 'train'").iloc[-1]
    assert train["vel_loss"] > 0 and train["lambda_t"] == 1.0
    # the objective is the distributional loss plus lambda * lambda_t * the velocity term (lambda 0.1)
    assert abs(train["loss"] - (train["dist_loss"] + 0.1 * train["vel_loss"])) < 1e-4
