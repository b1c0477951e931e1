"""A HF backbone run over sets of cells: bidirectional attention, no positions (every cell at position 0).

LLaMA: position 0 makes the rotary step the identity (cos 0 = 1, sin 0 = 0) and a set needs no mask (every cell
sees every cell). HF's ``LlamaModel.forward`` would rebuild an all-zero additive mask [b, 1, s, s] and rotary
tables for b x s positions on every call, and SDPA would add that mask to every score; here the blocks are
called directly, in HF's order (blocks, then the final norm), with no mask, ``is_causal=False`` and the
constant (cos, sin) = (1, 0), made once per head size, dtype and device. The arithmetic is HF's forward's
(tests/unit/test_set_backbone.py), and whatever wraps the blocks (LoRA, mHC, forward hooks) sees the same calls.
GPT-2 adds its learned position 0 to every cell, so it goes through HF's forward with the zero mask.

Shapes: b sets, s cells per set, h hidden size, k head size.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from transformers import LlamaModel


@functools.lru_cache(maxsize=16)
def _identity_rotary(head_dim: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # [1, 1, k]: HF unsqueezes the head axis in, giving [1, 1, 1, k] against q and k [b, heads, s, k]
    return (torch.ones(1, 1, head_dim, dtype=dtype, device=device),
            torch.zeros(1, 1, head_dim, dtype=dtype, device=device))


def run_set_backbone(backbone: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """h [b, s, h] -> the backbone's last hidden state [b, s, h], every cell attending to every cell."""
    if isinstance(backbone, LlamaModel):
        cfg = backbone.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        # a compiled forward (training.compile) makes the constants inside its graph; dynamo would trace through
        # the cache anyway, with a warning on every compile
        tables = _identity_rotary.__wrapped__ if torch.compiler.is_compiling() else _identity_rotary
        rotary = tables(head_dim, h.dtype, h.device)
        for block in backbone.layers[: cfg.num_hidden_layers]:
            h = block(h, attention_mask=None, position_embeddings=rotary, is_causal=False)
        return backbone.norm(h)
    b, s, _ = h.shape
    mask = torch.zeros(b, 1, s, s, dtype=h.dtype, device=h.device)
    positions = torch.zeros(b, s, dtype=torch.long, device=h.device)
    return backbone(inputs_embeds=h, attention_mask=mask, position_ids=positions).last_hidden_state
