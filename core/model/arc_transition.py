"""The Arc State Transition architecture (arc-state 0.11.1, ``StateTransitionPerturbationModel``) in our model family.

Same call as ``StateTransitionModel`` (z_control, pert_idx, batch_idx -> latent), but Arc's computation, so that
an imported Arc checkpoint predicts what arc-state predicts (Adduri et al. 2025; read from arc-state's source and
checked against its outputs in tests/unit/test_arc_import.py):
    pe      = pert_encoder(onehot(p))                       an MLP on the one-hot column of the perturbation
    ce      = basal_encoder(x_control)                      an MLP (or one Linear without basal projection)
    h       = pe + ce (+ batch_embedding[b])
    r       = backbone(h)                                   llama: bidirectional, no positions, final RMSNorm;
                                                            GPT-2: causal in effect (arc_backbone)
    latent  = head(r + ce)           predict_residual, output_space embedding | gene  (residual in HIDDEN space)
            = final_down_then_up(head(r) + x_control)       predict_residual, output_space all
            = head(r)                                       otherwise
    latent  = relu(latent)           when there is no gene decoder, or the embedding is X_hvg / .X (Arc's rule)
    counts  = gene_decoder(latent)   [Linear, LayerNorm, GELU, Dropout] per hidden size, Linear, ReLU
The output ReLU on embeddings is Arc's (it makes signed embeddings non-negative); it is kept here because this
class is for reproducing Arc; our own model has none. Arc's MLPs are ``[Linear, act, Dropout] * (n - 1) + Linear``.
Arc's frozen all-zero token table is not built (inputs are embeddings, the table is never read).

Shapes: b sets, s cells per set, d input dimension, o output dimension, h hidden size, g genes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from transformers import GPT2Config, GPT2Model, LlamaConfig, LlamaModel

from core.model.set_backbone import run_set_backbone

ACTIVATIONS = {"relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "elu": nn.ELU, "selu": nn.SELU, "gelu": nn.GELU}


@dataclass
class ArcSpec:
    """What Arc's hyper-parameters say about the architecture (see core/arc/folder.py for where each comes from)."""

    input_dim: int
    hidden_dim: int
    output_dim: int
    pert_dim: int
    batch_dim: int | None = None  # rows of the batch embedding; None: no batch encoder
    n_encoder_layers: int = 2
    n_decoder_layers: int = 2
    activation: str = "gelu"
    use_basal_projection: bool = True
    predict_residual: bool = True
    output_space: str = "gene"  # embedding | gene | all
    embed_key: str | None = None
    backbone: str = "llama"  # llama | gpt2
    backbone_kwargs: dict = field(default_factory=dict)
    decoder_cfg: dict | None = None  # latent_dim, gene_dim, hidden_dims, dropout, residual_decoder
    dropout: float = 0.1
    cell_set_len: int = 256

    def to_dict(self) -> dict:
        return asdict(self)


def arc_mlp(d_in: int, d_out: int, hidden: int, n_layers: int, act: type[nn.Module], dropout: float) -> nn.Sequential:
    """Arc's build_mlp layout, so that Linear layers sit at indices 0, 3, 6, ..."""
    if n_layers == 1:
        return nn.Sequential(nn.Linear(d_in, d_out))
    layers: list[nn.Module] = [nn.Linear(d_in, hidden), act(), nn.Dropout(dropout)]
    for _ in range(n_layers - 2):
        layers += [nn.Linear(hidden, hidden), act(), nn.Dropout(dropout)]
    return nn.Sequential(*layers, nn.Linear(hidden, d_out))


class GeneDecoder(nn.Module):
    """Arc's LatentToGeneDecoder: latent [.., o] -> non-negative counts [.., g]."""

    def __init__(self, latent_dim: int, gene_dim: int, hidden_dims: list[int], dropout: float = 0.1,
                 residual_decoder: bool = False):
        super().__init__()
        self.residual_decoder = residual_decoder
        dims = [latent_dim] + list(hidden_dims)
        blocks = [[nn.Linear(a, b), nn.LayerNorm(b), nn.GELU(), nn.Dropout(dropout)] for a, b in zip(dims, dims[1:])]
        if residual_decoder:
            self.blocks = nn.ModuleList(nn.Sequential(*b) for b in blocks)
            self.final_layer = nn.Sequential(nn.Linear(dims[-1], gene_dim), nn.ReLU())
        else:
            self.decoder = nn.Sequential(*[m for b in blocks for m in b], nn.Linear(dims[-1], gene_dim), nn.ReLU())

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        if not self.residual_decoder:
            return self.decoder(latent)
        outputs, current = [], latent
        for i, block in enumerate(self.blocks):
            out = block(current)
            if i % 2 == 1:  # odd blocks add the output of the even block before them
                out = out + outputs[i - 1]
            outputs.append(out)
            current = out
        return self.final_layer(current)


def arc_backbone(kind: str, kwargs: dict) -> tuple[nn.Module, bool]:
    """(HF backbone, bidirectional) from Arc's transformer_backbone_kwargs, without its token table."""
    kwargs = dict(kwargs)
    # A one-row token table: never read (we pass inputs_embeds); HF checks the special ids against its size.
    ids = dict(vocab_size=1, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if kind == "llama":
        bidirectional = bool(kwargs.pop("bidirectional_attention", False))
        kwargs.update(ids, use_cache=False)
        cfg = LlamaConfig(**kwargs)
        cfg._attn_implementation = "sdpa"
        return LlamaModel(cfg), bidirectional
    if kind == "gpt2":
        kwargs.update(ids, use_cache=False)
        cfg = GPT2Config(**kwargs)
        cfg._attn_implementation = "sdpa"
        # Causal, as arc-state computes it: its GPT2BidirectionalModel passes no mask and removes the causal-mask
        # builder, but HF's GPT-2 attention (transformers 4.52, the oldest arc-state allows) then sets SDPA's
        # is_causal itself (no mask, more than one query), so every arc-state GPT-2 model attends causally.
        # Measured on tests/fixtures/arc/emb_gpt2: causal matches arc-state to 9e-8, bidirectional is 1.6e-3 off.
        return GPT2Model(cfg), False
    raise ValueError(f"unknown Arc backbone {kind!r}; arc-state has llama and GPT2")


class ArcTransitionModel(nn.Module):
    def __init__(self, spec: ArcSpec):
        super().__init__()
        self.spec = spec
        act = ACTIVATIONS[spec.activation.lower()]
        h = spec.hidden_dim
        self.pert_encoder = arc_mlp(spec.pert_dim, h, h, spec.n_encoder_layers, act, spec.dropout)
        self.basal_encoder = (arc_mlp(spec.input_dim, h, h, spec.n_encoder_layers, act, spec.dropout)
                              if spec.use_basal_projection else nn.Linear(spec.input_dim, h))
        self.backbone, self.bidirectional = arc_backbone(spec.backbone, spec.backbone_kwargs)
        self.backbone.get_input_embeddings().weight.requires_grad_(False)
        self.head = arc_mlp(h, spec.output_dim, h, spec.n_decoder_layers, act, spec.dropout)
        self.final_down_then_up = (nn.Sequential(nn.Linear(spec.output_dim, spec.output_dim // 8), nn.GELU(),
                                                 nn.Linear(spec.output_dim // 8, spec.output_dim))
                                   if spec.output_space == "all" else None)
        self.batch_embedding = nn.Embedding(spec.batch_dim, h) if spec.batch_dim else None
        self.gene_decoder = (GeneDecoder(**spec.decoder_cfg)
                             if spec.decoder_cfg is not None and spec.output_space != "embedding" else None)
        self.latent_relu = self.gene_decoder is None or spec.embed_key in (None, "X_hvg")
        # Fine-tuning on data with its own labels: data perturbation row -> one-hot column, data batch index ->
        # batch row (batch_dim: none). None: the caller passes Arc's own columns and rows (Arc's inference).
        self.register_buffer("pert_columns", None)
        self.register_buffer("batch_rows", None)

    def use_data_labels(self, pert_columns: list[int], batch_rows: list[int] | None = None) -> None:
        """Index perturbations (and batches) by the training data's rows; stored in the state dict."""
        self.pert_columns = torch.tensor(pert_columns, dtype=torch.long)
        if batch_rows is not None:
            self.batch_rows = torch.tensor(batch_rows, dtype=torch.long)

    def add_perturbation_columns(self, n_new: int, init: torch.Tensor) -> None:
        """Grow the one-hot input by ``n_new`` columns after the pretrained ones (which keep their index and
        weights); each new column of the first pert_encoder layer starts at ``init`` [h]."""
        old = self.pert_encoder[0]
        new = nn.Linear(old.in_features + n_new, old.out_features)
        with torch.no_grad():
            new.weight[:, :old.in_features] = old.weight
            new.weight[:, old.in_features:] = init[:, None]
            new.bias.copy_(old.bias)
        self.pert_encoder[0] = new
        self.spec.pert_dim += n_new

    def add_batch_rows(self, n_new: int) -> None:
        """New batches get new rows, zero at first (no batch term until training moves them)."""
        old = self.batch_embedding
        new = nn.Embedding(old.num_embeddings + n_new, old.embedding_dim)
        with torch.no_grad():
            new.weight.zero_()
            new.weight[:old.num_embeddings] = old.weight
        self.batch_embedding = new
        self.spec.batch_dim = old.num_embeddings + n_new

    def forward(self, z_control: torch.Tensor, pert_idx: torch.Tensor, batch_idx: torch.Tensor | None = None):
        """z_control [b, s, d], pert_idx [b] (one-hot column), batch_idx [b, s] or None -> latent [b, s, o].
        Arc feeds the batch index of the TARGET cells (the window's own rows), not of the drawn controls."""
        if self.pert_columns is not None:
            pert_idx = self.pert_columns[pert_idx]
        if self.batch_rows is not None and batch_idx is not None:
            batch_idx = self.batch_rows[batch_idx]
        onehot = nn.functional.one_hot(pert_idx, self.spec.pert_dim).to(z_control.dtype)
        ce = self.basal_encoder(z_control)
        h = self.pert_encoder(onehot)[:, None, :] + ce
        if self.batch_embedding is not None and batch_idx is not None:
            # index batch_dim means "a batch the model never saw" (our sampling): no batch term for that cell
            known = batch_idx < self.spec.batch_dim
            h = h + self.batch_embedding(batch_idx.clamp(max=self.spec.batch_dim - 1)) * known[..., None].to(h.dtype)
        r = self._backbone(h)
        if self.spec.predict_residual and self.spec.output_space == "all":
            latent = self.final_down_then_up(self.head(r) + z_control)
        elif self.spec.predict_residual:
            latent = self.head(r + ce)
        else:
            latent = self.head(r)
        return torch.relu(latent) if self.latent_relu else latent

    def _backbone(self, h: torch.Tensor) -> torch.Tensor:
        if not self.bidirectional:  # causal llama, and every GPT-2 (arc_backbone): HF's causal mask, positions 0..
            return self.backbone(inputs_embeds=h).last_hidden_state
        # zero positions make RoPE the identity (cos 0 = 1, sin 0 = 0), which is what Arc's NoRoPE does
        return run_set_backbone(self.backbone, h)

    def decode_genes(self, latent: torch.Tensor) -> torch.Tensor | None:
        """Counts [.., g] from the latent through Arc's gene decoder; None for an embedding-space model."""
        return self.gene_decoder(latent) if self.gene_decoder is not None else None
