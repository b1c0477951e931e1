"""An Arc State folder imported into our ArcTransitionModel computes what arc-state computes (compared with
arc-state's own committed outputs: CI has no arc-state), and the load report accounts for every tensor."""

from pathlib import Path

import pytest
import torch

from core.arc.folder import read_arc_folder
from core.arc.importer import import_arc_model
from core.arc.safe_load import load_torch_file

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "arc"


def _arc_forward(run: str, model):
    saved = torch.load(FIXTURES / run / "forward.pt", weights_only=True)
    column = saved["pert_emb"][:1].argmax(1)  # one perturbation per set, as Arc's infer feeds it
    with torch.no_grad():
        latent = model(saved["ctrl_cell_emb"][None], column, saved["batch"][None])[0]
        counts = model.decode_genes(latent)
    return saved, latent, counts


@pytest.mark.parametrize("run", ["emb_llama", "gene_llama", "emb_gpt2"])
def test_imported_forward_equals_arc_state_on_its_own_set(run):
    model, _ = import_arc_model(read_arc_folder(FIXTURES / run))
    assert not model.training  # Arc's load_from_checkpoint leaves train mode on; dropout must be off here
    saved, latent, counts = _arc_forward(run, model)
    assert torch.allclose(latent, saved["preds"], atol=1e-5, rtol=0)
    if run == "gene_llama":
        assert torch.allclose(counts, saved["pert_cell_counts_preds"], atol=1e-5, rtol=0)
    else:
        assert counts is None and "pert_cell_counts_preds" not in saved


def test_arc_output_relu_applies_to_embeddings_and_not_to_a_gene_space_latent():
    emb, _ = import_arc_model(read_arc_folder(FIXTURES / "emb_llama"))
    gene, _ = import_arc_model(read_arc_folder(FIXTURES / "gene_llama"))
    assert emb.latent_relu and not gene.latent_relu
    saved = torch.load(FIXTURES / "gene_llama" / "forward.pt", weights_only=True)
    assert (saved["preds"] < 0).any()  # arc-state's own gene-space latent is signed before infer clips it
    _, latent, _ = _arc_forward("gene_llama", gene)
    assert (latent < 0).sum() == (saved["preds"] < 0).sum()


@pytest.mark.parametrize("run, n_tensors", [("emb_llama", 33), ("gene_llama", 43)])
def test_load_report_accounts_for_every_checkpoint_tensor(run, n_tensors):
    state = load_torch_file(FIXTURES / run / "checkpoints" / "final.ckpt")["state_dict"]
    assert len(state) == n_tensors
    _, report = import_arc_model(read_arc_folder(FIXTURES / run))
    assert set(report["loaded"]) | set(report["dropped"]) == set(state)
    assert not set(report["loaded"]) & set(report["dropped"])
    assert list(report["dropped"]) == ["transformer_backbone.embed_tokens.weight"]
    assert "all zero" in report["dropped"]["transformer_backbone.embed_tokens.weight"]
    down = "layers.1.mlp.down_proj.weight"
    assert report["loaded"][f"transformer_backbone.{down}"] == f"backbone.{down}"
    assert report["loaded"]["project_out.3.weight"] == "head.3.weight"
    assert report["loaded"]["batch_encoder.weight"] == "batch_embedding.weight"
    assert report["kind"].startswith("Arc State Transition checkpoint (")


def test_loaded_tensors_are_the_checkpoint_values():
    folder = read_arc_folder(FIXTURES / "gene_llama")
    model, report = import_arc_model(folder)
    ours = model.state_dict()
    for arc_key, our_key in report["loaded"].items():
        assert torch.equal(ours[our_key], folder.state_dict[arc_key]), arc_key


def test_backbone_sizes_come_from_the_checkpoint_and_rms_eps_is_llamas_as_in_arc():
    model, _ = import_arc_model(read_arc_folder(FIXTURES / "emb_llama"))
    cfg = model.backbone.config
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.head_dim) == (
        32, 64, 2, 4, 8)
    assert cfg.rms_norm_eps == 1e-6 and model.bidirectional


def test_lora_trained_arc_checkpoint_is_merged_and_computes_what_arc_state_computes():
    folder = read_arc_folder(FIXTURES / "emb_lora")
    model, report = import_arc_model(folder)
    state = folder.state_dict
    adapters = [k for k in state if ".lora_A." in k or ".lora_B." in k]
    assert len(adapters) == 16  # A and B of q, k, v, o in 2 layers (Arc's default targets without adapt_mlp)
    assert set(report["loaded"]) | set(report["dropped"]) | set(report["merged"]) == set(state)
    stem = "transformer_backbone.base_model.model.layers.0.self_attn.q_proj"
    assert report["loaded"][f"{stem}.base_layer.weight"] == "backbone.layers.0.self_attn.q_proj.weight"
    delta = 8 / 4 * state[f"{stem}.lora_B.default.weight"] @ state[f"{stem}.lora_A.default.weight"]
    assert delta.abs().max() > 1e-3  # the adapters moved: a forward without merging would differ
    assert torch.allclose(model.backbone.layers[0].self_attn.q_proj.weight,
                          state[f"{stem}.base_layer.weight"] + delta, atol=1e-7)
    assert model.basal_encoder.__class__.__name__ == "Linear" and model.batch_embedding is None
    saved, latent, _ = _arc_forward("emb_lora", model)
    assert torch.allclose(latent, saved["preds"], atol=1e-5, rtol=0)


def test_a_checkpoint_from_before_the_bidirectional_flag_is_built_bidirectional_as_trained(tmp_path):
    import shutil

    from core.arc.safe_load import plain

    folder = Path(shutil.copytree(FIXTURES / "emb_llama", tmp_path / "old"))
    path = folder / "checkpoints" / "final.ckpt"
    ckpt = plain(load_torch_file(path))
    del ckpt["hyper_parameters"]["transformer_backbone_kwargs"]["bidirectional_attention"]  # as arc-state <= 0.9
    torch.save(ckpt, path)
    model, report = import_arc_model(read_arc_folder(folder))
    assert model.bidirectional and "before the flag existed" in report["notes"][0]
    saved, latent, _ = _arc_forward("emb_llama", model)  # the fixture was trained bidirectional
    assert torch.allclose(latent, saved["preds"], atol=1e-5, rtol=0)


def test_a_causal_arc_llama_is_built_causal():
    folder = read_arc_folder(FIXTURES / "emb_llama")
    folder.hparams["transformer_backbone_kwargs"]["bidirectional_attention"] = False
    model, report = import_arc_model(folder)
    assert not model.bidirectional and report["notes"] == []
    saved, latent, _ = _arc_forward("emb_llama", model)
    # causal attention with RoPE: the first cell sees only itself, so the outputs move away from Arc's
    assert (latent - saved["preds"]).abs().max() > 1e-3


def test_a_gpt2_backbone_attends_causally_as_arc_state_computes_it():
    # arc-state's GPT2BidirectionalModel is causal in effect (core/model/arc_transition.py, arc_backbone): the
    # bidirectional forward of the same weights is far from arc-state's own output, the causal one equals it
    model, report = import_arc_model(read_arc_folder(FIXTURES / "emb_gpt2"))
    assert report["kind"] == "Arc State Transition checkpoint (embedding space, GPT2 backbone)"
    assert list(report["dropped"]) == ["transformer_backbone.wte.weight"]
    saved, causal, _ = _arc_forward("emb_gpt2", model)
    model.bidirectional = True
    _, bidirectional, _ = _arc_forward("emb_gpt2", model)
    assert (causal - saved["preds"]).abs().max() < 1e-6
    assert (bidirectional - saved["preds"]).abs().max() > 1e-4
