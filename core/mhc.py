"""Manifold-constrained hyper-connections (mHC, arXiv 2512.24880) around the blocks of HF transformers.

The residual stream is widened to n streams that persist across layers. Each wrapped block F computes (§4.1)
    x_next = H_res x + H_post^T F(H_pre x)              x: n x C streams of one token
and HF blocks, which add their own residual, are used as the delta branch F(u) = block(u) - u.

Within a contiguous run of wrapped layers the first wrapper repeats its [b, t, c] input into n streams, the
wrappers in between pass [b, t, n c] (HF's layer loop never looks inside), and the last reads the streams
back to [b, t, c] with learned weights that sum to 1. Expanding and collapsing inside every block instead
would make H_res mix n identical copies, where it does nothing and gets no gradient. The same holds, by
construction, for the first layer of a run (as in the paper and DeepSeek V4, whose streams also start as
copies): its H_res is inert.

Function preservation (what lets mHC be added to a pretrained model at fine-tuning time): the streams start
identical, H_res has exact row sums (rows are normalised last), sum(H_pre) = 1 and H_post = 1, so every
stream carries exactly the unwrapped network's hidden state, whatever H_res is, and read-out weights that
sum to 1 return it. H_pre starts as a soft one-hot on stream (layer index mod n), which breaks the symmetry
between the streams without breaking preservation; core/mhc_mappings.py gives every initial value and why.
BERT is post-norm, so the paper's identity-mapping argument for stability does not carry over to it;
preservation at initialisation still holds, since it needs only the algebra above.

Shapes: b batch, t tokens, n streams, c hidden size.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from core.errors import ConfigError
from core.mhc_mappings import mHCMappings

# Where each supported architecture keeps its list of blocks (GPT-2, LLaMA and relatives, BERT).
_LAYER_LISTS = ("h", "layers", "encoder.layer")


class mHCTransformerLayer(nn.Module):
    """One HF block with mHC around it; call-compatible with the block it wraps."""

    def __init__(self, block: nn.Module, hidden_dim: int, layer_index: int, expand: bool, collapse: bool,
                 n_streams: int = 4, sinkhorn_iters: int = 20, dynamic: bool = True, projection: str = "sinkhorn"):
        super().__init__()
        self.block = block
        self.layer_index, self.expand, self.collapse = layer_index, expand, collapse
        self.n_streams, self.hidden_dim = n_streams, hidden_dim
        self.hc = mHCMappings(hidden_dim, n_streams, sinkhorn_iters, dynamic, projection, layer_index)
        if collapse:
            # Learned read-out of the streams, softmax-weighted so it sums to 1 (function preservation). A plain
            # mean would make this layer's H_res inert: the mean of H_res x is the mean of x when columns sum
            # to 1. It starts as a soft one-hot (0.85) on the stream this layer's H_pre favours.
            head = torch.zeros(n_streams)
            head[layer_index % n_streams] = math.log(0.85 * (n_streams - 1) / 0.15)
            self.head_logits = nn.Parameter(head)

    def extra_repr(self) -> str:
        return f"layer_index={self.layer_index}, expand={self.expand}, collapse={self.collapse}"

    def mappings(self) -> dict[str, torch.Tensor]:
        """float32 CPU copies of H_res [n, n], H_pre [n], H_post [n]: means over the last batch seen, or the
        static (bias-only) mappings before the first forward pass."""
        return {k: v.detach().float().cpu() for k, v in self.hc.current().items()}

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        n, c = self.n_streams, self.hidden_dim
        if self.expand:
            streams = hidden_states.unsqueeze(-2).expand(*hidden_states.shape[:-1], n, c)
        else:
            streams = hidden_states.unflatten(-1, (n, c))
        h_pre, h_post, h_res = self.hc(streams)
        dtype = hidden_states.dtype
        h_pre, h_post, h_res = h_pre.to(dtype), h_post.to(dtype), h_res.to(dtype)

        block_input = (h_pre.unsqueeze(-1) * streams).sum(-2)  # H_pre x: [b, t, c]
        output = self.block(block_input, *args, **kwargs)
        block_output, extras = (output[0], output[1:]) if isinstance(output, tuple) else (output, None)
        delta = block_output - block_input  # F(u): the block's own residual taken out

        mixed = torch.matmul(h_res, streams) if h_res.ndim > 2 else torch.einsum("ij,...jc->...ic", h_res, streams)
        streams = mixed + h_post.unsqueeze(-1) * delta.unsqueeze(-2)
        if self.collapse:
            head = torch.softmax(self.head_logits.float(), -1).to(dtype)
            result = torch.einsum("n,...nc->...c", head, streams)
        else:
            result = streams.flatten(-2)
        return (result, *extras) if extras is not None else result


def _find_layer_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and any(name == p or name.endswith("." + p) for p in _LAYER_LISTS):
            return name, module
    raise ConfigError(
        f"cannot find the transformer blocks of {type(model).__name__}: mHC supports models with blocks in "
        f"'.h' (GPT-2), '.layers' (LLaMA) or '.encoder.layer' (BERT)"
    )


def _contiguous_runs(indices: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def apply_mhc_to_transformer(model: nn.Module, hidden_dim: int, n_streams: int = 4, sinkhorn_iters: int = 20,
                             layer_indices=None, projection: str = "sinkhorn", dynamic: bool = True) -> nn.Module:
    """Wrap the blocks at ``layer_indices`` (all when None) of ``model`` with mHC, in place; returns ``model``.

    Works on GPT2Model, LlamaModel, BertModel, and any module containing one (a peft model, a task head).
    Raises ConfigError for an unknown architecture, bad indices, or a model that already has mHC.
    """
    name, layers = _find_layer_list(model)
    if any(isinstance(layer, mHCTransformerLayer) for layer in layers):
        raise ConfigError(f"'{name}' is already wrapped with mHC; apply it once")
    depth = len(layers)
    config_hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    if config_hidden is not None and config_hidden != hidden_dim:
        raise ConfigError(f"hidden_dim={hidden_dim} does not match the model's hidden_size={config_hidden}")
    if layer_indices is None:
        indices = list(range(depth))
    else:
        indices = sorted(set(int(i) for i in layer_indices))
        bad = [i for i in indices if not 0 <= i < depth]
        if bad or not indices:
            raise ConfigError(
                f"mhc.layer_indices {list(layer_indices)} must be a non-empty list of layers in 0..{depth - 1} "
                f"(the model has {depth} layers)"
            )
    for run in _contiguous_runs(indices):
        for i in run:
            layers[i] = mHCTransformerLayer(
                layers[i], hidden_dim, layer_index=i, expand=(i == run[0]), collapse=(i == run[-1]),
                n_streams=n_streams, sinkhorn_iters=sinkhorn_iters, dynamic=dynamic, projection=projection,
            )
    return model


def find_mhc_layers(model: nn.Module) -> list[mHCTransformerLayer]:
    """The mHC-wrapped layers of ``model`` in depth order."""
    return [m for m in model.modules() if isinstance(m, mHCTransformerLayer)]


def mhc_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The mHC mapping parameters (phi, b, alpha of every layer), e.g. to keep them trainable under LoRA."""
    return [p for layer in find_mhc_layers(model) for name, p in layer.named_parameters()
            if not name.startswith("block.")]


def composite_gain(h_res_list) -> dict[str, float]:
    """Amax gain magnitude of H_res over depth (paper §5.4): max |row sum| and max |column sum| of the product
    H_L ... H_1. Doubly stochastic factors give 1 for both; Sinkhorn's column error can only drift it."""
    mats = [torch.as_tensor(h, dtype=torch.float64) for h in h_res_list]
    if not mats:
        raise ValueError("composite_gain needs at least one H_res matrix")
    product = mats[0]
    for h in mats[1:]:
        product = h @ product
    return {"row": float(product.abs().sum(-1).max()), "col": float(product.abs().sum(-2).max())}
