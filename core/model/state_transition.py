"""The State Transition (ST) model: a set of control cells in, the same set as perturbed cells out.

Following Arc Institute's State (Adduri et al. 2025, the ST model): a set of S control-cell embeddings of one
cell type is encoded, the perturbation's embedding is added to every cell, a transformer backbone with
bidirectional attention lets the cells of the set see each other, and a head maps back to the embedding:
    h       = basal_encoder(z_control) + pert_embedding[p] (+ batch_embedding[b])
    z_pred  = z_control + head(backbone(h))                  (the shift is what is learned)
    delta_z = z_pred - z_control
No output activation: latent embeddings and their shifts are signed (Arc State's output ReLU clamps them).
Attention is bidirectional and the set carries no positions (all position ids 0), so the model is
equivariant to the order of the cells, as a set model must be. The head's last layer starts at zero, so a
fresh model predicts "no change" (z_pred = z_control), the simplest baseline, rather than noise.

Shapes: b sets, s cells per set, d embedding dimension, h hidden size.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import GPT2Config, GPT2Model, LlamaConfig, LlamaModel

from core.model.set_backbone import run_set_backbone

BACKBONES = ("llama", "gpt2")


def make_backbone(kind: str, hidden: int, n_layers: int, n_heads: int) -> nn.Module:
    """A HF LLaMA or GPT-2 stack without dropout; its token table is unused (we pass ``inputs_embeds``)."""
    # One token id (0) for everything: the table is never read, and HF checks special ids against it.
    ids = dict(vocab_size=1, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if kind == "llama":
        cfg = LlamaConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=n_layers,
                          num_attention_heads=n_heads, num_key_value_heads=n_heads, max_position_embeddings=8,
                          use_cache=False, attn_implementation="sdpa", **ids)
        model = LlamaModel(cfg)
    elif kind == "gpt2":
        cfg = GPT2Config(n_embd=hidden, n_layer=n_layers, n_head=n_heads, n_positions=8, resid_pdrop=0.0,
                         embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False, attn_implementation="sdpa", **ids)
        model = GPT2Model(cfg)
    else:
        raise ValueError(f"unknown backbone {kind!r}; choose one of {BACKBONES}")
    model.get_input_embeddings().weight.requires_grad_(False)
    return model


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))


class StateTransitionModel(nn.Module):
    """``n_batches`` > 0 adds a batch covariate; batch index ``n_batches`` means "unknown batch" (a held-out
    mouse) and adds nothing: its row is fixed at zero."""

    def __init__(self, embed_dim: int, n_perts: int, hidden_dim: int = 128, n_layers: int = 4, n_heads: int = 4,
                 backbone: str = "llama", n_batches: int = 0):
        super().__init__()
        self.embed_dim, self.hidden_dim, self.n_batches = embed_dim, hidden_dim, n_batches
        self.basal_encoder = _mlp(embed_dim, hidden_dim, hidden_dim)
        self.pert_embedding = nn.Embedding(n_perts, hidden_dim)
        self.batch_embedding = nn.Embedding(n_batches + 1, hidden_dim, padding_idx=n_batches) if n_batches else None
        self.backbone = make_backbone(backbone, hidden_dim, n_layers, n_heads)
        self.head = _mlp(hidden_dim, hidden_dim, embed_dim)
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, z_control: torch.Tensor, pert_idx: torch.Tensor, batch_idx: torch.Tensor | None = None):
        """z_control [b, s, d], pert_idx [b], batch_idx [b, s] or None -> z_pred [b, s, d]."""
        h = self.basal_encoder(z_control) + self.pert_embedding(pert_idx)[:, None, :]
        if self.batch_embedding is not None and batch_idx is not None:
            h = h + self.batch_embedding(batch_idx)
        out = run_set_backbone(self.backbone, h)  # bidirectional, every cell at position 0: no order
        return z_control + self.head(out)
