"""The mHC layer goes wherever its model goes (issue 15, target 4): Sinkhorn, the mappings and their buffers follow
``model.to(device / dtype)`` and bf16 autocast, checked on the CPU with the ``meta`` device standing in for CUDA
(an operation that mixes a meta tensor with a CPU one fails as a CUDA/CPU mix would) and with float64."""

import pytest
import torch
from transformers import LlamaConfig, LlamaModel

from core.mhc.layer import apply_mhc_to_transformer, find_mhc_layers
from core.mhc.sinkhorn import doubly_stochastic_error

C = 32


def tiny_llama():
    torch.manual_seed(0)
    return LlamaModel(LlamaConfig(hidden_size=C, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                                  num_key_value_heads=4, vocab_size=64))


def inputs(dtype=torch.float32):
    return torch.randn(2, 6, C, generator=torch.Generator().manual_seed(1)).to(dtype)


def with_mhc(projection="sinkhorn", dynamic=True, perturb=True):
    """A wrapped tiny LLaMA whose dynamic mappings have moved off their init, so H_res differs per token."""
    model = tiny_llama().eval()
    apply_mhc_to_transformer(model, C, projection=projection, dynamic=dynamic)
    if perturb:
        gen = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for layer in find_mhc_layers(model):
                if dynamic:
                    layer.hc.phi.copy_(torch.randn(layer.hc.phi.shape, generator=gen) * 0.5)
                    layer.hc.alpha.fill_(1.0)
                layer.hc.b_res.add_(torch.randn(layer.hc.b_res.shape, generator=gen))
    return model


def per_token_h_res(model) -> list[torch.Tensor]:
    """Each layer's H_res of the last forward pass, [tokens, n, n] (dynamic) or [n, n] (static)."""
    out = []
    for layer in find_mhc_layers(model):
        h_res = layer.hc._last[2]
        out.append(h_res.permute(2, 0, 1) if h_res.ndim == 3 else h_res)
    return out


@pytest.mark.parametrize("projection,dynamic", [("sinkhorn", True), ("sinkhorn", False), ("permutations", True)])
def test_every_mhc_tensor_follows_the_model_to_another_device_forward_and_backward(projection, dynamic):
    model = with_mhc(projection, dynamic).to("meta")
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    mhc_names = [name for name in tensors if ".hc." in name or "head_logits" in name]
    # the mappings' parameters and all their buffers (expansion, gate_index, the n! permutations) moved
    assert any("expansion" in n for n in mhc_names) and any("b_res" in n for n in mhc_names)
    assert any("permutations" in n for n in mhc_names) == (projection == "permutations")
    assert any("gate_index" in n for n in mhc_names) == dynamic
    assert [n for n in mhc_names if tensors[n].device.type != "meta"] == []
    x = inputs().to("meta").requires_grad_()
    # no attention mask: HF's mask builder reads a value (.item()), which a meta tensor does not have
    out = model(inputs_embeds=x).last_hidden_state  # fails on any tensor the layer makes on the CPU
    assert out.device.type == "meta" and out.shape == (2, 6, C)
    for layer in find_mhc_layers(model):
        assert all(t.device.type == "meta" and t.dtype == torch.float32 for t in layer.hc._last)
    out.sum().backward()  # the hand-written backward passes (Sinkhorn, RMS projection, stream mix) too
    grads = {name: p.grad for name, p in model.named_parameters() if ".hc." in name}
    assert grads and all(g is not None and g.device.type == "meta" for g in grads.values())
    assert x.grad.device.type == "meta"


def test_float64_model_computes_float32_coefficients_with_the_same_values_and_float64_streams():
    """Coefficients are float32 whatever the streams' dtype (paper §4.4): a float64 model gets the float32 model's
    H_res and doubly stochastic ones, and float64 outputs equal to the float32 model's."""
    single = with_mhc()
    double = with_mhc().to(torch.float64)
    with torch.no_grad():
        out32 = single(inputs_embeds=inputs()).last_hidden_state
        out64 = double(inputs_embeds=inputs(torch.float64)).last_hidden_state
    assert out32.dtype == torch.float32 and out64.dtype == torch.float64
    assert torch.allclose(out64.float(), out32, atol=1e-5)
    assert (out32 - inputs()).abs().max() > 0.1  # the layers did something: the check above is not vacuous
    for h32, h64 in zip(per_token_h_res(single), per_token_h_res(double), strict=True):
        assert h64.dtype == torch.float32 and h64.shape == (12, 4, 4)
        assert torch.allclose(h64, h32, atol=1e-6)
        rows, cols = doubly_stochastic_error(h64)
        assert rows < 1e-6 and cols < 2.5e-2  # rows exact; columns within the 20-iteration bound of mappings.py
        assert h64.std(0).max() > 1e-3  # per token: the dynamic part is in play


def test_bf16_autocast_keeps_sinkhorn_and_mappings_in_float32_and_close_to_the_float32_pass():
    model = with_mhc()
    x = inputs()
    with torch.no_grad():
        reference = model(inputs_embeds=x).last_hidden_state
    seen = {}  # each layer's input under autocast, to recompute its mappings outside autocast
    hooks = [layer.register_forward_pre_hook(lambda mod, args: seen.__setitem__(mod, args[0].detach()))
             for layer in find_mhc_layers(model)]
    x = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(inputs_embeds=x).last_hidden_state
    for hook in hooks:
        hook.remove()
    # bf16 has 8 bits of mantissa: the output agrees with the float32 pass to about 1% of its scale, and differs
    # from it, so the blocks did run in bf16 (LLaMA's final norm hands back the inputs' float32)
    error = (out.float() - reference).abs().max()
    assert 1e-4 < error < 0.03 * reference.abs().max()
    for layer in find_mhc_layers(model):
        h_pre, h_post, h_res = layer.hc._last
        assert h_pre.dtype == h_post.dtype == h_res.dtype == torch.float32
        rows, cols = doubly_stochastic_error(h_res.permute(2, 0, 1))
        assert rows < 1e-6 and cols < 2.5e-2
        # autocast did not reach inside: the same tokens give the same mappings with autocast off, to float32
        tokens = seen[layer].reshape(-1, seen[layer].shape[-1])
        with torch.no_grad():
            again = layer.hc.batch_last(tokens, repeated=layer.expand, remember=False)
        for during, after in zip((h_pre, h_post, h_res), again, strict=True):
            assert torch.allclose(during, after, atol=1e-6)
    out.float().square().mean().backward()
    for layer in find_mhc_layers(model):
        for name in ("phi", "alpha", "b_pre", "b_post", "b_res"):
            grad = getattr(layer.hc, name).grad
            assert grad.dtype == torch.float32 and torch.isfinite(grad).all() and grad.abs().max() > 0, name
