"""Arc State tensor names <-> ours (``ArcTransitionModel``), both ways, so import and export use one table.

Arc (arc-state 0.11.1) names its submodules ``transformer_backbone``, ``project_out`` and ``batch_encoder``; ours
are ``backbone``, ``head`` and ``batch_embedding`` (the names of our own ST model). The gene decoder keeps
Arc's inner layout. Arc's frozen all-zero token table (``embed_tokens`` for llama, ``wte`` for GPT-2,
vocab_size rows, 32000 by default) is dropped on import (never read: inputs are embeddings) and written back
as zeros of its original shape on export. A LoRA-trained Arc checkpoint (peft names ``base_model.model.`` and
``base_layer``) is merged on import: W + (alpha / r) B A, peft's scaling, which is what its forward computes.
"""

from __future__ import annotations

import torch

# (Arc prefix, our prefix), longest first where one is a prefix of another
PREFIXES = (("transformer_backbone.", "backbone."), ("project_out.", "head."), ("batch_encoder.", "batch_embedding."),
            ("pert_encoder.", "pert_encoder."), ("basal_encoder.", "basal_encoder."),
            ("final_down_then_up.", "final_down_then_up."), ("gene_decoder.", "gene_decoder."))
TOKEN_TABLES = ("transformer_backbone.embed_tokens.weight", "transformer_backbone.wte.weight")


def arc_to_ours(key: str) -> str | None:
    for arc, ours in PREFIXES:
        if key.startswith(arc):
            return ours + key[len(arc):]
    return None


def ours_to_arc(key: str) -> str | None:
    for arc, ours in PREFIXES:
        if key.startswith(ours):
            return arc + key[len(ours):]
    return None


def merge_lora(state: dict, alpha: float, r: int) -> tuple[dict, dict, dict]:
    """Arc LoRA names -> plain names with the adapters merged into their base weights.
    Returns (state, plain name -> the checkpoint's name, adapter tensor -> the weight it was merged into)."""
    scale = alpha / r
    out, origin, merged = {}, {}, {}
    prefix = "transformer_backbone.base_model.model."
    for key, value in state.items():
        if ".lora_A." in key or ".lora_B." in key:
            continue
        plain_key = key.replace(prefix, "transformer_backbone.", 1) if key.startswith(prefix) else key
        if ".base_layer." in key:
            stem = key[: key.index(".base_layer.")]
            plain_key = plain_key.replace(".base_layer.", ".")
            a, b = state.get(f"{stem}.lora_A.default.weight"), state.get(f"{stem}.lora_B.default.weight")
            if a is not None and b is not None and plain_key.endswith(".weight"):
                value = value + scale * (b.float() @ a.float()).to(value.dtype)
                merged[f"{stem}.lora_A.default.weight"] = merged[f"{stem}.lora_B.default.weight"] = plain_key
        out[plain_key], origin[plain_key] = value, key
    unmerged = [k for k in state if (".lora_A." in k or ".lora_B." in k) and k not in merged]
    if unmerged:
        from core.errors import CheckpointError

        raise CheckpointError(f"LoRA tensor {unmerged[0]} has no base weight or partner to merge with")
    return out, origin, merged


def is_token_table(key: str) -> bool:
    return key in TOKEN_TABLES


def zero_token_table(hidden: int, vocab_size: int) -> torch.Tensor:
    return torch.zeros(vocab_size, hidden)
