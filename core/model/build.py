"""Building an ST model from a config: from scratch, or from a base checkpoint, then LoRA, then mHC.

Order matters and is the point of this file: the base weights are loaded FIRST into the plain model, then
LoRA adapters are injected (peft), then mHC wraps the backbone's blocks. Arc State applies LoRA before loading,
so the wrapped names no longer match and none of its backbone tensors load. Every tensor's fate is written to
a load report (loaded / skipped / rebuilt / initialised).
"""

from __future__ import annotations

import torch

from core.config import Config, config_from_dict
from core.errors import CheckpointError
from core.model.state_transition import StateTransitionModel

LORA_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}
ADAPTER_MARKERS = ("lora_", ".hc.", "head_logits", ".block.")


def plain_model(cfg: Config, embed_dim: int, n_perts: int, n_batches: int = 0) -> StateTransitionModel:
    m = cfg.model.kwargs
    return StateTransitionModel(embed_dim, n_perts, m.hidden_dim, m.n_layers, m.n_heads, m.backbone,
                                n_batches if m.use_batch else 0)


def add_adapters(model: StateTransitionModel, cfg: Config, lora: bool) -> list[str]:
    """Inject LoRA (when ``lora``) then mHC into the backbone; returns notes for the log."""
    from core.mhc import apply_mhc_to_transformer, mhc_parameters

    m, notes = cfg.model.kwargs, []
    if lora:
        from peft import LoraConfig, inject_adapter_in_model

        targets = m.lora.target_modules or LORA_TARGETS[m.backbone]
        lora_cfg = LoraConfig(r=m.lora.r, lora_alpha=m.lora.alpha, lora_dropout=m.lora.dropout,
                              target_modules=targets, fan_in_fan_out=(m.backbone == "gpt2"))
        inject_adapter_in_model(lora_cfg, model.backbone)
        for name, p in model.backbone.named_parameters():
            p.requires_grad_("lora_" in name)
        for module in (model.basal_encoder, model.head) + ((model.batch_embedding,) if model.batch_embedding else ()):
            module.requires_grad_(m.train_encoders)
        model.pert_embedding.requires_grad_(True)  # new perturbation entries must learn
        notes.append(f"LoRA r={m.lora.r} alpha={m.lora.alpha} on {targets}; backbone frozen")
    if m.use_mhc:
        apply_mhc_to_transformer(model.backbone, m.hidden_dim, n_streams=m.mhc.n_streams,
                                 sinkhorn_iters=m.mhc.sinkhorn_iters, layer_indices=m.mhc.layer_indices,
                                 projection=m.mhc.projection, dynamic=m.mhc.dynamic)
        for p in mhc_parameters(model.backbone):
            p.requires_grad_(True)
        notes.append(f"mHC n={m.mhc.n_streams} on layers {m.mhc.layer_indices or 'all'}")
    return notes


def base_from_checkpoint(ckpt: dict, path) -> tuple[Config, dict, dict]:
    """(base config, base pert map with its control label, base model state dict) from a loaded checkpoint."""
    try:
        hp = ckpt["hyper_parameters"]
        base_cfg = config_from_dict(hp["config"])
        state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
        perts = {"map": dict(hp["pert_map"]), "control": hp["control"], "embed_dim": int(hp["embed_dim"])}
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"{path} is not a State Transition checkpoint of this project (missing {err})") from err
    return base_cfg, perts, state


def load_base_weights(model: StateTransitionModel, base_state: dict, base_perts: dict,
                      pert_map: dict[str, int], control: str) -> dict:
    """Copy the base's tensors into ``model``; perturbation rows are matched by label (the control by role),
    and labels the base never saw get a new row initialised at the mean of the base's perturbation rows."""
    if any(marker in k for k in base_state for marker in ADAPTER_MARKERS):
        raise CheckpointError("the base checkpoint already has LoRA or mHC inside; use a pretrained base model")
    own = model.state_dict()
    report = {"loaded": [], "skipped": [], "rebuilt": [], "initialised": []}
    with torch.no_grad():
        for key, value in base_state.items():
            if key == "pert_embedding.weight":
                continue
            if key in own and own[key].shape == value.shape:
                own[key].copy_(value)
                report["loaded"].append(key)
            else:
                report["skipped"].append(key)
        base_rows = base_state["pert_embedding.weight"]
        base_map, base_control = base_perts["map"], base_perts["control"]
        non_control = [i for label, i in base_map.items() if label != base_control]
        mean_row = base_rows[non_control].mean(0) if non_control else torch.zeros_like(base_rows[0])
        new_labels = []
        for label, i in pert_map.items():
            source = base_control if label == control else label
            if source in base_map:
                own["pert_embedding.weight"][i] = base_rows[base_map[source]]
            else:
                own["pert_embedding.weight"][i] = mean_row
                new_labels.append(label)
        (report["rebuilt"] if new_labels else report["loaded"]).append("pert_embedding.weight")
        report["new_perturbations"] = new_labels
        report["control_mapped"] = {control: base_control}
    report["initialised"] = sorted(set(own) - set(base_state))
    model.load_state_dict(own)
    return report


def build_for_training(cfg: Config, embed_dim: int, pert_map: dict[str, int], control: str,
                       n_batches: int = 0) -> tuple[StateTransitionModel, dict, list[str]]:
    """The model to train: from scratch, or from ``model.init_from`` then LoRA then mHC."""
    from core.runs import load_checkpoint

    notes, report = [], {"loaded": [], "skipped": [], "rebuilt": [], "initialised": ["(all: from scratch)"]}
    init_from = cfg.model.init_from
    if init_from:
        if init_from == "demo":
            from core.model.base import demo_base_checkpoint

            init_from = demo_base_checkpoint()
        base_cfg, base_perts, base_state = base_from_checkpoint(load_checkpoint(init_from), init_from)
        if base_perts["embed_dim"] != embed_dim:
            raise CheckpointError(f"the base model was trained on {base_perts['embed_dim']}-d embeddings but the "
                                  f"data's embedding has {embed_dim} dimensions; choose the matching embedding")
        for key in ("hidden_dim", "n_layers", "n_heads", "backbone"):
            setattr(cfg.model.kwargs, key, getattr(base_cfg.model.kwargs, key))
        model = plain_model(cfg, embed_dim, len(pert_map), n_batches)
        report = load_base_weights(model, base_state, base_perts, pert_map, control)
        notes.append(f"base {init_from}: {len(report['loaded'])} tensors loaded, {len(report['skipped'])} skipped, "
                     f"rebuilt {report['rebuilt']} (new perturbations {report['new_perturbations']})")
        lora = cfg.model.kwargs.lora.enable
    else:
        model = plain_model(cfg, embed_dim, len(pert_map), n_batches)
        lora = False
        if cfg.model.kwargs.lora.enable:
            notes.append("no base model (model.init_from): LoRA skipped, all weights train from scratch")
    notes += add_adapters(model, cfg, lora)
    return model, report, notes


def build_for_checkpoint(ckpt: dict, path) -> tuple[StateTransitionModel, Config, dict]:
    """Rebuild a trained model (with its LoRA and mHC) and load its weights exactly."""
    cfg, perts, state = base_from_checkpoint(ckpt, path)
    hp = ckpt["hyper_parameters"]
    model = plain_model(cfg, perts["embed_dim"], len(perts["map"]), int(hp.get("n_batches", 0)))
    add_adapters(model, cfg, bool(hp.get("lora_applied", False)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match its own config ({len(missing)} missing, "
                              f"{len(unexpected)} unexpected tensors); was it written by another version?")
    return model, cfg, hp
