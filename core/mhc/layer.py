"""Manifold-constrained hyper-connections (mHC, arXiv 2512.24880) around the blocks of HF transformers.

The residual stream is widened to n streams that persist across layers. Each wrapped block F computes (§4.1, eq. 3)
    x_next = H_res x + H_post^T F(H_pre x)              x: n x C streams of one token
and HF blocks, which add their own residual, are used as the delta branch F(u) = block(u) - u.

Within a stack (contiguous wrapped layers) the first wrapper spreads its [b, t, c] input h over n streams as
x_i = E_i h, the wrappers in between pass [b, t, n c] (HF's layer loop never looks inside), and the last reads
the streams back to [b, t, c] with learned weights r that sum to 1. Expanding and collapsing inside every block
instead would make H_res mix n copies, where it does nothing and gets no gradient.

Function preservation, with every mapping learning from step 1 (what lets mHC be added to a pretrained model at
fine-tuning time and still act in a short fine-tune). At init, with the zero-sum pattern p of
core/mhc/mappings.py (the same in every layer):
    E = H_post = 1 + p,   sum(H_pre) = sum(r) = 1,   H_pre . p = r . p = 0,   H_res = Sinkhorn(tau I) = a I + b (J - I)
Then the streams are x = 1 m^T + p e^T (their mean m, one deviation e along p): H_pre^T x = m, H_res 1 = 1 and
H_res p = (a - b) p, so x_next = 1 (m + F(m))^T + p ((a - b) e + F(m))^T keeps the form, and the mean follows
the unwrapped network, m_next = m + F(m). Every block reads exactly the plain hidden state and r^T x returns it.
Yet the streams differ (e != 0 from the first layer on, since E = 1 + p), and H_pre and r are not uniform, so
the gradient reaching the streams differs between them: H_res's gradient G^T x has a component with zero row
and column sums (the directions Sinkhorn lets through) in every layer, the first and last included. With
identical streams (E = H_post = 1), or uniform read-in and read-out, it would be exactly zero at init.
n = 2 is the exception: p takes the only zero-sum direction, so H_pre and r must be uniform and H_res waits for
H_post and the dynamic terms to move. core/mhc/mappings.py gives every initial value.
BERT is post-norm, so the paper's identity-mapping argument for stability does not carry over to it;
preservation at initialisation still holds, since it needs only the algebra above.

Computation. With u = H_pre x, the update is x_next = (H_res - H_post H_pre^T) x + H_post^T block(u): the block's
own residual is folded into the mixing matrix, so one batched matrix product per token, with rows
[H_pre; H_res - H_post H_pre^T], yields both the block input and the mixed streams, and one rank-1 update adds the
block output. The last layer of a stack multiplies by the read-out first (one row instead of n); the first
uses that its streams are E h, so A x = (A E) h. Every form is the same arithmetic as eq. 3. On the CPU the
per-token coefficients come from one compiled pass (core/mhc/coefficients.py), and a dynamic layer with float32
streams reads and writes them through compiled kernels too (core/mhc/streams.py: one pass for the norm and the
block input, one for the next streams); other devices, mHC-lite and torch.compile take the torch path
(``use_kernel = False`` forces it; the tests hold the two to each other), as do static mappings and other dtypes
for the mixing itself.

Hidden states: HF's ``output_hidden_states`` records each block's own input and output ([b, t, c]); at
initialisation these equal the unwrapped model's.

Shapes: b batch, t tokens, N = b t, n streams, c hidden size, r rows written out (n, or 1 in a stack's last layer).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from core.config import MhcConfig
from core.errors import ConfigError
from core.mhc.coefficients import mixing_coefficients
from core.mhc.kernels import StreamMix
from core.mhc.mappings import RES_LOGIT_BOUND, RMS_EPS, mHCMappings, tilted_weights, without_autocast
from core.mhc.streams import GradientLink, stream_read, stream_write

# Where each supported architecture keeps its list of blocks (GPT-2, LLaMA and relatives, BERT).
_LAYER_LISTS = ("h", "layers", "encoder.layer")


class mHCTransformerLayer(nn.Module):
    """One HF block with mHC around it; call-compatible with the block it wraps."""

    def __init__(self, block: nn.Module, hidden_dim: int, config: MhcConfig, layer_index: int, expand: bool,
                 collapse: bool):
        """``expand`` / ``collapse``: this layer is the first / last of its stack (it may be both)."""
        super().__init__()
        self.block = block
        self.layer_index, self.expand, self.collapse = layer_index, expand, collapse
        self.n_streams, self.hidden_dim = config.n_streams, hidden_dim
        n_streams = config.n_streams
        self.hc = mHCMappings(hidden_dim, n_streams, config.sinkhorn_iters, config.dynamic, config.projection,
                              layer_index)
        if collapse:
            # Learned read-out of the streams, softmax-weighted so it sums to 1. A plain mean would make this
            # layer's H_res inert (the mean of H_res x is the mean of x when columns sum to 1); weights tilted
            # orthogonally to p (like H_pre) read the mean at init, yet give this H_res a gradient at step 1.
            self.head_logits = nn.Parameter(torch.log(tilted_weights(n_streams, layer_index + 1)))
        # the per-token coefficients through the compiled CPU pass (core/mhc/coefficients.py); False: the torch
        # path, the reference the tests hold it to
        self.use_kernel = True

    def extra_repr(self) -> str:
        return f"layer_index={self.layer_index}, expand={self.expand}, collapse={self.collapse}"

    @property
    def dynamic(self) -> bool:
        return self.hc.dynamic

    @torch.no_grad()
    def mappings(self, hidden: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """float32 CPU tensors h_res [n, n], h_pre [n], h_post [n].

        Dynamic mappings: their mean over the tokens of ``hidden`` (what this layer's forward receives: [..., c]
        for the first layer of a stack, [..., n c] otherwise) when given, else over the tokens of the last batch
        seen (padding included), else, before any forward pass, the static (bias-only) part. Static mappings:
        always the mappings themselves.
        """
        if hidden is not None and self.dynamic:
            tokens = hidden.reshape(-1, hidden.shape[-1])
            h_pre, h_post, h_res = self.hc.batch_last(tokens, repeated=self.expand, remember=False)
            current = {"h_pre": h_pre.mean(-1), "h_post": h_post.mean(-1), "h_res": h_res.mean(-1)}
        else:
            current = self.hc.current()
        return {k: current[k].detach().float().cpu() for k in ("h_res", "h_pre", "h_post")}

    def _mixing_rows(self, h_pre, h_post, h_res):
        """A = [H_pre; R (H_res - H_post H_pre^T)] and the write-out weights R H_post, R the read-out in a stack's
        last layer and the identity elsewhere. Batch-last in, per token out: A [N, 1 + r, n], post [N, r, 1]."""
        h_eff = h_res - h_post.unsqueeze(1) * h_pre.unsqueeze(0)  # [n, n, (N)]
        if self.collapse:
            head = self._read_out_weights()
            h_eff = torch.tensordot(head, h_eff, dims=1).unsqueeze(0)  # [1, n, (N)]
            h_post = torch.tensordot(head, h_post, dims=1).unsqueeze(0)  # [1, (N)]
        a = torch.cat([h_pre.unsqueeze(0), h_eff], 0)  # [1 + r, n, (N)]
        if self.dynamic:
            return a.permute(2, 0, 1).contiguous(), h_post.t().unsqueeze(-1)
        return a, h_post.unsqueeze(-1)

    def _read_out_weights(self) -> torch.Tensor | None:
        """The read-out's weights [n] (float32, summing to 1) in a stack's last layer; None elsewhere."""
        return torch.softmax(self.head_logits.float(), -1) if self.collapse else None

    def _remember(self, h_pre: torch.Tensor, h_post: torch.Tensor, h_res: torch.Tensor) -> None:
        """The kernel's token-first mappings, kept batch-last as the torch path keeps them (views, no copies)."""
        self.hc.remember(h_pre.t(), h_post.t(), h_res.permute(1, 2, 0))

    def _kernel_mixing_rows(self, tokens: torch.Tensor):
        """What ``batch_last`` then ``_mixing_rows`` give, through core/mhc/coefficients.py's compiled pass."""
        logits = self.hc.logits(tokens, repeated=self.expand)
        a, post, h_pre, h_post, h_res = mixing_coefficients(logits, self._read_out_weights(), self.n_streams,
                                                            self.hc.sinkhorn_iters, RES_LOGIT_BOUND)
        if not self.dynamic:
            self.hc.remember(h_pre[0], h_post[0], h_res[0])
            return a[0], post[0]
        self._remember(h_pre, h_post, h_res)
        return a, post

    def _use_kernel(self, tokens: torch.Tensor) -> bool:
        # the torch path on other devices, for mHC-lite, and inside torch.compile (which cannot trace numba)
        return (self.use_kernel and tokens.device.type == "cpu" and self.hc.projection == "sinkhorn"
                and not torch.compiler.is_compiling())

    def _stream_read(self, tokens: torch.Tensor):
        """Block input [N, c], mixing rows, write-out weights and the gradient link of a dynamic layer on the
        kernel path (core/mhc/streams.py). Inside a stack the rows are A [N, 1 + r, n] for the streams themselves;
        a stack's first layer, whose streams are E h (E the fixed expansion), gets A E [N, 1 + r, 1] to apply to h."""
        hc = self.hc
        with without_autocast(tokens.device.type):  # the kernels' inputs share the streams' dtype
            if self.expand:
                a, post = self._kernel_mixing_rows(tokens)
                rows = (a @ hc.expansion).unsqueeze(-1)
                return rows[:, 0] * tokens, rows, post, None
            link = GradientLink()
            block_input, rows, post, h_pre, h_post, h_res = stream_read(
                tokens, hc.phi.float(), hc.gates(), hc.bias(), self._read_out_weights(), self.n_streams,
                hc.sinkhorn_iters, RES_LOGIT_BOUND, RMS_EPS, link)
        self._remember(h_pre, h_post, h_res)
        return block_input, rows, post, link

    def _read(self, tokens: torch.Tensor, use_kernel: bool):
        """Block input [N, 1, c], mixed streams [N, r, c] and write-out weights ([N, r, 1]; static: [r, 1]), from
        the coefficient kernel or the torch path."""
        n, c, dtype = self.n_streams, self.hidden_dim, tokens.dtype
        if use_kernel:
            a, post = self._kernel_mixing_rows(tokens)
        else:
            a, post = self._mixing_rows(*self.hc.batch_last(tokens, repeated=self.expand))
        a, post = a.to(dtype), post.to(dtype)
        if self.expand:  # the streams are E h, E the fixed expansion: A x = (A E) h
            a_sum = (a @ self.hc.expansion.to(dtype)).unsqueeze(-1)
            if not self.dynamic:
                a_sum = a_sum.expand(tokens.shape[0], *a_sum.shape)
            block_input, mixed = torch.bmm(a_sum, tokens.unsqueeze(-2)).split([1, a.shape[-2] - 1], dim=-2)
        else:
            if not self.dynamic:
                a = a.expand(tokens.shape[0], *a.shape)
            block_input, mixed = StreamMix.apply(a, tokens.view(-1, n, c))
        return block_input, mixed, post

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        c = self.hidden_dim
        lead = hidden_states.shape[:-1]
        tokens = hidden_states.reshape(-1, hidden_states.shape[-1])  # [N, c] (first layer of a stack) or [N, n c]
        use_kernel = self._use_kernel(tokens)
        # the stream kernels work in the coefficients' dtype, float32; other streams (bfloat16) mix through torch
        streams_on_kernel = use_kernel and self.dynamic and tokens.dtype == torch.float32
        if streams_on_kernel:
            tokens = tokens.contiguous()
            block_input, rows, post, link = self._stream_read(tokens)
        else:
            block_input, mixed, post = self._read(tokens, use_kernel)

        output = self.block(block_input.reshape(*lead, c), *args, **kwargs)
        block_output, extras = (output[0], output[1:]) if isinstance(output, tuple) else (output, None)

        if streams_on_kernel:
            streams = stream_write(tokens, rows, post, block_output.reshape(-1, c).to(tokens.dtype).contiguous(),
                                   link)
        else:
            block_output = block_output.reshape(-1, 1, c)
            if not self.dynamic:
                post = post.expand(tokens.shape[0], *post.shape)
            streams = torch.baddbmm(mixed, post, block_output)  # mixed + H_post^T block(u), per token
        result = streams.reshape(*lead, -1)
        return (result, *extras) if extras is not None else result


def _looks_like_block_list(module: nn.Module) -> bool:
    return len(module) > 0 and len({type(m) for m in module}) == 1 and not isinstance(module[0], nn.ModuleList)


def _find_layer_list(model: nn.Module) -> tuple[str, nn.Module, nn.ModuleList]:
    """(name, owner, blocks): the one list of transformer blocks in ``model`` and the module that holds it."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and any(name == p or name.endswith("." + p) for p in _LAYER_LISTS):
            if _looks_like_block_list(module) or any(isinstance(m, mHCTransformerLayer) for m in module):
                found.append((name, module))
    if not found:
        raise ConfigError(
            f"cannot find the transformer blocks of {type(model).__name__}: mHC supports models with blocks in "
            f"'.h' (GPT-2), '.layers' (LLaMA) or '.encoder.layer' (BERT); pass the backbone itself"
        )
    if len(found) > 1:
        names = ", ".join(repr(n) for n, _ in found)
        raise ConfigError(f"{type(model).__name__} holds several block lists ({names}); pass the backbone to wrap")
    name, layers = found[0]
    owner_name = name.rsplit(".", 1)[0] if "." in name else ""
    owner = model.get_submodule(owner_name)
    if name.endswith("encoder.layer"):  # BERT: the config sits on the model that holds .encoder
        owner = model.get_submodule(owner_name.rsplit(".", 1)[0]) if "." in owner_name else model
    return name, owner, layers


def _contiguous_stacks(indices: list[int]) -> list[list[int]]:
    stacks: list[list[int]] = []
    for i in indices:
        if stacks and i == stacks[-1][-1] + 1:
            stacks[-1].append(i)
        else:
            stacks.append([i])
    return stacks


def apply_mhc_to_transformer(model: nn.Module, hidden_dim: int, config: MhcConfig | None = None,
                             **fields) -> nn.Module:
    """Wrap the blocks of ``model`` with mHC as ``config`` says (default ``MhcConfig()``; keyword ``fields`` such
    as ``n_streams=2`` or ``layer_indices=[1, 2]`` override it), in place; returns ``model``.

    Works on GPT2Model (``.h``), LlamaModel (``.layers``), BertModel (``.encoder.layer``), and any module that
    contains exactly one of them (a peft model, a task head, a State Transition model), also after LoRA
    adapters were injected into the blocks. Raises ConfigError for an unknown architecture, bad indices or
    sizes, or a model that already has mHC.
    """
    config = dataclasses.replace(config or MhcConfig(), **fields)
    name, owner, layers = _find_layer_list(model)
    if any(isinstance(layer, mHCTransformerLayer) for layer in layers):
        raise ConfigError(f"'{name}' is already wrapped with mHC; apply it once")
    depth = len(layers)
    config_hidden = getattr(getattr(owner, "config", None), "hidden_size", None)
    if config_hidden is not None and config_hidden != hidden_dim:
        raise ConfigError(f"mHC hidden_dim={hidden_dim} does not match the model's hidden_size={config_hidden}")
    if config.n_streams < 2 or config.sinkhorn_iters < 1:
        raise ConfigError(f"mHC needs n_streams >= 2 and sinkhorn_iters >= 1; got {config.n_streams} and "
                          f"{config.sinkhorn_iters}")
    if config.projection not in ("sinkhorn", "permutations"):
        raise ConfigError(f"mHC projection must be 'sinkhorn' or 'permutations'; got {config.projection!r}")
    layer_indices = config.layer_indices
    if layer_indices is None:
        indices = list(range(depth))
    else:
        indices = sorted({int(i) for i in layer_indices})
        bad = [i for i in indices if not 0 <= i < depth]
        if bad or not indices:
            raise ConfigError(
                f"mhc.layer_indices {list(layer_indices)} must be a non-empty list of layers in 0..{depth - 1} "
                f"(the model has {depth} layers)"
            )
    for stack in _contiguous_stacks(indices):
        for i in stack:
            layers[i] = mHCTransformerLayer(layers[i], hidden_dim, config, layer_index=i, expand=(i == stack[0]),
                                            collapse=(i == stack[-1]))
    return model


def find_mhc_layers(model: nn.Module) -> list[mHCTransformerLayer]:
    """The mHC-wrapped layers of ``model`` in depth order."""
    return [m for m in model.modules() if isinstance(m, mHCTransformerLayer)]


def mhc_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The mHC mapping parameters (phi, b, alpha of every layer, read-out heads), e.g. to keep them trainable
    under LoRA; never the wrapped blocks' own weights."""
    return [p for layer in find_mhc_layers(model) for name, p in layer.named_parameters()
            if not name.startswith("block.")]


def composite_gain(h_res_list) -> dict[str, float]:
    """Amax gain magnitude of H_res over depth (paper §5.4, Fig. 7): max |row sum| and max |column sum| of the
    product H_L ... H_1 (``h_res_list`` in depth order). Row-stochastic factors give a row gain of 1; the
    column gain drifts from 1 only through Sinkhorn's column error."""
    mats = [torch.as_tensor(h, dtype=torch.float64) for h in h_res_list]
    if not mats:
        raise ValueError("composite_gain needs at least one H_res matrix")
    product = mats[0]
    for h in mats[1:]:
        product = h @ product
    return {"row": float(product.abs().sum(-1).max()), "col": float(product.abs().sum(-2).max())}
