"""mHC: the mapping computation against DeepSeek V4's, and one wrapped HF LLaMA block against its peers.

Rows, all forward + backward, n = 4 streams:
- mappings: H_pre, H_post, H_res (and the H_pre-collapsed block input, which DeepSeek's module also returns)
  for 8 x 256 tokens at hidden 512, against ``DeepseekV4HyperConnection`` holding the same weights. Target <= 1.0x.
- block: one LlamaDecoderLayer shaped like the project's backbone (hidden 256, MLP 4 x 256, 4 heads; batch 8,
  sequence 64, the peers' common set-up), wrapped as a middle layer of a stack (n streams in, n streams out:
  the most work any wrapped layer does), against the same block with its plain residual (target <= 1.10x) and
  against hyper-connections' ``ManifoldConstrainedHyperConnections`` around the same block as a delta branch
  (target <= 1.0x). Dynamic mappings (the paper's) are the headline; static ones are reported too.
- the same block against its plain residual at hidden 128 (the demo model's size), 512 and 1024, no target:
  how the overhead falls as the block's own work grows.
"""

from __future__ import annotations

import copy

import torch

from bench.bench_sinkhorn import interleaved
from bench.harness import Row
from core.config import MhcConfig
from core.mhc.layer import mHCTransformerLayer
from core.mhc.mappings import mHCMappings

N_STREAMS = 4


def _backward(outputs, upstream):
    torch.autograd.backward(list(outputs), list(upstream))


def mapping_row(repeats: int) -> Row:
    from transformers.models.deepseek_v4.configuration_deepseek_v4 import DeepseekV4Config
    from transformers.models.deepseek_v4.modeling_deepseek_v4 import DeepseekV4HyperConnection

    n, hidden, batch, seq = N_STREAMS, 512, 8, 256
    gen = torch.Generator().manual_seed(0)
    ours = mHCMappings(hidden, n, sinkhorn_iters=20)
    theirs = DeepseekV4HyperConnection(DeepseekV4Config(hidden_size=hidden, hc_mult=n, hc_sinkhorn_iters=20))
    with torch.no_grad():  # our initial biases, a trained-looking phi; DeepSeek's comb is our H_res transposed
        ours.phi.normal_(0.0, 0.02, generator=gen)
        fn_pre, fn_post, fn_res = ours.phi.split([n, n, n * n])
        theirs.fn.copy_(torch.cat([fn_pre, fn_post, fn_res.view(n, n, -1).transpose(0, 1).reshape(n * n, -1)]))
        theirs.base.copy_(torch.cat([ours.b_pre, ours.b_post, ours.b_res.t().flatten()]))
        theirs.scale.copy_(ours.alpha)
    streams = torch.randn(batch, seq, n, hidden, generator=gen).requires_grad_()
    tokens = streams.view(-1, n * hidden)
    up_pre_post = torch.randn(batch, seq, n, generator=gen)
    up_res = torch.randn(batch, seq, n, n, generator=gen)
    up_collapsed = torch.randn(batch, seq, hidden, generator=gen)
    # the same upstream gradients in our batch-last layout
    up_ours = (up_pre_post.reshape(-1, n).t().contiguous(), up_res.reshape(-1, n, n).permute(1, 2, 0).contiguous(),
               up_collapsed.reshape(-1, 1, hidden))

    def ours_step():
        streams.grad = None
        h_pre, h_post, h_res = ours.batch_last(tokens)
        collapsed = torch.bmm(h_pre.t().unsqueeze(1), streams.view(-1, n, hidden))
        _backward((h_post, h_res, collapsed), up_ours)

    def theirs_step():
        streams.grad = None
        post, comb, collapsed = theirs(streams)
        _backward((post, comb, collapsed), (up_pre_post, up_res.transpose(-1, -2), up_collapsed))

    with torch.no_grad():
        _, h_post, h_res = ours.batch_last(tokens)
        post, comb, _ = theirs(streams)
        max_diff = max((h_post.t().reshape(post.shape) - post).abs().max().item(),
                       (h_res.permute(2, 1, 0).reshape(comb.shape) - comb).abs().max().item())
    t_ours, t_theirs = interleaved([ours_step, theirs_step], repeats)
    ratio = t_ours.median_s / t_theirs.median_s
    return Row(group="mhc", name=f"mappings H_pre/H_post/H_res, {batch}x{seq} tokens, C={hidden}, fwd+bwd",
               timing=t_ours, baseline_name="DeepseekV4HyperConnection, same weights", baseline=t_theirs,
               target="<= 1.0x", met=ratio <= 1.0, extra={"max_abs_diff_vs_deepseek": f"{max_diff:.1e}"})


class _DeltaBranch(torch.nn.Module):
    """F(u) = block(u) - u: an HF block without its own residual, for hyper-connections' wrapper."""

    def __init__(self, block: torch.nn.Module):
        super().__init__()
        self.block = block

    def forward(self, u, **kwargs):
        return self.block(u, **kwargs) - u


def block_rows(repeats: int, hidden: int = 256, peer: bool = True) -> list[Row]:
    from hyper_connections.manifold_constrained_hyper_connections import ManifoldConstrainedHyperConnections
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    n, batch, seq = N_STREAMS, 8, 64
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_attention_heads=4,
                      num_key_value_heads=4, num_hidden_layers=1, attn_implementation="sdpa")
    block = LlamaDecoderLayer(cfg, 0)
    gen = torch.Generator().manual_seed(1)
    position_embeddings = LlamaRotaryEmbedding(cfg)(torch.zeros(1, seq, hidden), torch.arange(seq)[None])
    kwargs = {"position_embeddings": position_embeddings, "attention_mask": None}

    def wrapped(dynamic: bool) -> mHCTransformerLayer:
        layer = mHCTransformerLayer(copy.deepcopy(block), hidden, MhcConfig(n_streams=n, dynamic=dynamic),
                                    layer_index=1, expand=False, collapse=False)
        if dynamic:
            with torch.no_grad():
                layer.hc.phi.normal_(0.0, 0.02, generator=gen)  # a trained-looking dynamic term
        return layer

    ours, ours_static = wrapped(True), wrapped(False)
    theirs = ManifoldConstrainedHyperConnections(n, dim=hidden, branch=_DeltaBranch(copy.deepcopy(block)),
                                                 layer_index=1, sinkhorn_iters=20)
    x = torch.randn(batch, seq, hidden, generator=gen).requires_grad_()
    up = torch.randn(batch, seq, hidden, generator=gen)
    streams = torch.randn(batch, seq, n * hidden, generator=gen).requires_grad_()
    up_streams = torch.randn(batch, seq, n * hidden, generator=gen)
    # hyper-connections folds the streams into the batch: [(b n), t, c]
    folded = streams.detach().view(batch, seq, n, hidden).permute(0, 2, 1, 3).reshape(batch * n, seq, hidden)
    folded.requires_grad_()
    up_folded = up_streams.view(batch, seq, n, hidden).permute(0, 2, 1, 3).reshape(batch * n, seq, hidden)

    def step(module, inp, upstream):
        def go():
            inp.grad = None
            module(inp, **kwargs).backward(upstream)

        return go

    fns = [step(block, x, up), step(ours, streams, up_streams), step(ours_static, streams, up_streams)]
    if peer:
        fns.append(step(theirs, folded, up_folded))
    t_plain, t_ours, t_static, *t_peer = interleaved(fns, repeats)
    name = f"LLaMA block C={hidden}, b{batch} s{seq}, n={n}, fwd+bwd"
    rows = []
    for label, timing in (("dynamic", t_ours), ("static", t_static)):
        ratio = timing.median_s / t_plain.median_s
        rows.append(Row(group="mhc", name=f"{name}, {label}", timing=timing, baseline_name="plain residual block",
                        baseline=t_plain, target="<= 1.10x" if peer else None, met=ratio <= 1.10 if peer else None))
    if not peer:
        return rows
    t_theirs = t_peer[0]
    ratio = t_ours.median_s / t_theirs.median_s
    rows.append(Row(group="mhc", name=f"{name}, dynamic", timing=t_ours, baseline_name="hyper-connections mHC",
                    baseline=t_theirs, target="<= 1.0x", met=ratio <= 1.0,
                    extra={"hyper_connections_vs_plain": f"{t_theirs.median_s / t_plain.median_s:.2f}x"}))
    return rows


def run(quick: bool) -> list[Row]:
    repeats = 5 if quick else 15
    rows = [mapping_row(repeats), *block_rows(repeats)]
    # How the overhead scales with the hidden size: the streams cost O(n C) per token, the block O(C^2), so the
    # ratio falls as C grows. Informative rows (no target): the target is at C = 256.
    for hidden in (128, 512) if quick else (128, 512, 1024):
        rows += block_rows(max(5, repeats // 2), hidden=hidden, peer=False)
    return rows


if __name__ == "__main__":
    for row in run(quick=False):
        print(f"{row.name} vs {row.baseline_name}: {row.timing.median_s * 1e3:.2f} ms vs "
              f"{row.baseline.median_s * 1e3:.2f} ms = {row.ratio:.2f}x ({'met' if row.met else 'MISSED'}) {row.extra}")
