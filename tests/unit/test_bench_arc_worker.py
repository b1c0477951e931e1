"""The arc bench's mHC row times two models with the same mHC: the worker's weight copy makes them one function
(the worker itself needs arc-state, which the suite does not install)."""

import torch
from transformers import LlamaConfig, LlamaModel

from bench.arc_step_worker import copy_mhc_weights
from core.mhc.layer import apply_mhc_to_transformer, find_mhc_layers

C = 32


def wrapped_llama():
    torch.manual_seed(0)  # the same block weights in both
    model = LlamaModel(LlamaConfig(hidden_size=C, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                                   num_key_value_heads=4, vocab_size=64)).eval()
    return apply_mhc_to_transformer(model, C)


def test_copied_mhc_weights_make_both_models_compute_the_same():
    source, target = wrapped_llama(), wrapped_llama()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # move the source's mappings and read-out off their (deterministic) init
        for name, p in source.named_parameters():
            if ".hc." in name or "head_logits" in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    x = torch.randn(2, 5, C, generator=gen)
    with torch.no_grad():
        before = (source(inputs_embeds=x).last_hidden_state - target(inputs_embeds=x).last_hidden_state).abs().max()
        blocks = {n: p.clone() for n, p in target.named_parameters() if ".block." in n}
        copy_mhc_weights(source, target)
        after = (source(inputs_embeds=x).last_hidden_state - target(inputs_embeds=x).last_hidden_state).abs().max()
    assert before > 1e-3 and after == 0
    assert all(torch.equal(p, blocks[n]) for n, p in target.named_parameters() if ".block." in n)
    assert all(torch.equal(a.hc.phi, b.hc.phi) for a, b in zip(find_mhc_layers(source), find_mhc_layers(target)))
