"""mHC around real HF transformers (tiny GPT2Model, LlamaModel, BertModel): preservation, training, plumbing."""

import pytest
import torch
from peft import LoraConfig, get_peft_model, inject_adapter_in_model
from transformers import BertConfig, BertModel, GPT2Config, GPT2Model, LlamaConfig, LlamaModel

from core.errors import ConfigError
from core.mhc.layer import apply_mhc_to_transformer, find_mhc_layers, mhc_parameters
from core.mhc.sinkhorn import doubly_stochastic_error

C = 32
ARCHS = ["llama", "gpt2", "bert"]


def tiny(arch: str, layers: int = 4):
    torch.manual_seed(0)
    if arch == "llama":
        return LlamaModel(LlamaConfig(hidden_size=C, intermediate_size=64, num_hidden_layers=layers,
                                      num_attention_heads=4, num_key_value_heads=4, vocab_size=64))
    if arch == "gpt2":
        return GPT2Model(GPT2Config(n_embd=C, n_layer=layers, n_head=4, vocab_size=64, bos_token_id=0,
                                    eos_token_id=0, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0))
    return BertModel(BertConfig(hidden_size=C, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=64,
                                vocab_size=64, hidden_dropout_prob=0, attention_probs_dropout_prob=0))


def inputs(seed=1):
    return torch.randn(2, 6, C, generator=torch.Generator().manual_seed(seed))


def padding_mask():
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0
    return mask


def run(model, x, **kw):
    return model(inputs_embeds=x, **kw).last_hidden_state


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("layer_indices", [None, [1, 2], [0, 3]], ids=["all", "run", "two-runs"])
def test_mhc_wrapped_model_matches_unwrapped_at_init(arch, layer_indices):
    model = tiny(arch).eval()
    x, mask = inputs(), padding_mask()
    with torch.no_grad():
        reference, masked_reference = run(model, x), run(model, x, attention_mask=mask)
        apply_mhc_to_transformer(model, C, layer_indices=layer_indices)
        wrapped, masked = run(model, x), run(model, x, attention_mask=mask)
    assert torch.allclose(wrapped, reference, atol=1e-5)
    assert torch.allclose(masked, masked_reference, atol=1e-5)  # the mask reached every block
    assert (masked_reference - reference).abs().max() > 1e-3
    assert len(find_mhc_layers(model)) == (4 if layer_indices is None else len(layer_indices))


@pytest.mark.parametrize("projection,dynamic", [("sinkhorn", False), ("permutations", True), ("permutations", False)])
def test_function_preservation_holds_for_static_and_permutation_variants(projection, dynamic):
    model = tiny("llama").eval()
    x = inputs()
    with torch.no_grad():
        reference = run(model, x)
        apply_mhc_to_transformer(model, C, projection=projection, dynamic=dynamic)
        assert torch.allclose(run(model, x), reference, atol=1e-5)


def test_bidirectional_backbone_with_4d_mask_and_a_kv_cache_pass_through():
    # The engine's ST backbone: LLaMA with an all-zero additive 4-D mask (no causal mask) and zero positions.
    model = tiny("llama").eval()
    x = inputs()
    kw = {"attention_mask": torch.zeros(2, 1, 6, 6), "position_ids": torch.zeros(2, 6, dtype=torch.long)}
    with torch.no_grad():
        reference, causal = run(model, x, **kw), model(inputs_embeds=x, use_cache=True)
        apply_mhc_to_transformer(model, C, layer_indices=[0, 1, 2])
        wrapped, cached = run(model, x, **kw), model(inputs_embeds=x, use_cache=True)
    assert torch.allclose(wrapped, reference, atol=1e-5)
    assert torch.allclose(cached.last_hidden_state, causal.last_hidden_state, atol=1e-5)
    assert cached.past_key_values.get_seq_length() == 6
    assert (causal.last_hidden_state - reference).abs().max() > 1e-3  # the 4-D mask did remove causality


def train_steps(model, steps=6, lr=1e-2, seed=3):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    x = inputs(seed)
    target = torch.randn_like(x)
    for _ in range(steps):
        opt.zero_grad()
        loss = (run(model, x) - target).pow(2).mean()
        loss.backward()
        opt.step()
    return x


@pytest.fixture(scope="module")
def trained_llama():
    model = tiny("llama").train()
    apply_mhc_to_transformer(model, C)
    before = [layer.mappings()["h_res"] for layer in find_mhc_layers(model)]
    x = train_steps(model, steps=12)
    return model, before, x


def test_gradients_reach_every_mapping_parameter_and_h_res_moves(trained_llama):
    model, before, _ = trained_llama
    model.zero_grad()
    run(model, inputs(4)).pow(2).mean().backward()
    layers = find_mhc_layers(model)
    for layer in layers:
        for name, p in layer.named_parameters():
            if not name.startswith("block."):
                assert p.grad is not None and p.grad.abs().sum() > 0, f"layer {layer.layer_index} {name}: no gradient"
    # Streams written as (1 + p) h and read non-uniformly give every layer's H_res a real gradient, the first
    # layer of the run included (measured 1e-7 to 1e-5 here, beside 1e-6 to 1e-4 for the other mappings)
    res_grads = [layer.hc.b_res.grad.abs().max().item() for layer in layers]
    assert min(res_grads) > 1e-8, res_grads
    moved = [(layer.mappings()["h_res"] - b).abs().max().item() for layer, b in zip(layers, before)]
    assert all(m > 1e-3 for m in moved), moved
    names = {name.rsplit(".", 1)[-1] for layer in layers for name, _ in layer.named_parameters()
             if not name.startswith("block.")}
    assert names == {"phi", "alpha", "b_pre", "b_post", "b_res", "head_logits"}
    assert len(mhc_parameters(model)) == 4 * 5 + 1  # phi, alpha, b_pre, b_post, b_res per layer + read-out head


def test_h_res_stays_doubly_stochastic_after_training(trained_llama):
    model, _, x = trained_llama
    for layer in find_mhc_layers(model):
        streams = torch.randn(2, 6, 4, C)  # per-token matrices, not only their mean
        with torch.no_grad():
            _, _, h_res = layer.hc(streams)
        rows, cols = doubly_stochastic_error(h_res)
        assert rows < 1e-6 and cols < 1e-2
        mappings = layer.mappings()
        assert (mappings["h_pre"] >= 0).all() and (mappings["h_post"] >= 0).all()


def test_mappings_report_the_mean_over_the_given_tokens(trained_llama):
    model, _, x = trained_llama
    layer = find_mhc_layers(model)[2]
    streams = torch.randn(3, 5, 4 * C)
    with torch.no_grad():
        h_pre, h_post, h_res = layer.hc(streams.unflatten(-1, (4, C)))
    reported = layer.mappings(streams)
    assert reported["h_res"].shape == (4, 4) and reported["h_pre"].shape == (4,) and reported["h_post"].shape == (4,)
    assert torch.allclose(reported["h_res"], h_res.mean((0, 1)), atol=1e-6)
    assert torch.allclose(reported["h_pre"], h_pre.mean((0, 1)), atol=1e-6)
    assert torch.allclose(reported["h_post"], h_post.mean((0, 1)), atol=1e-6)
    assert h_pre.std(dim=(0, 1)).max() > 1e-5  # dynamic: the tokens do differ
    with torch.no_grad():
        run(model, x)
    assert not torch.allclose(layer.mappings()["h_pre"], reported["h_pre"])  # the last batch seen, not these


def test_streams_diverge_and_their_order_matters_after_training():
    model = tiny("llama").train()
    apply_mhc_to_transformer(model, C, layer_indices=[0, 1, 2])
    x = train_steps(model, steps=8)
    model.eval()
    layers = find_mhc_layers(model)
    captured = {}
    hook = layers[1].register_forward_pre_hook(lambda m, args: captured.setdefault("streams", args[0].detach()))
    with torch.no_grad():
        reference = run(model, x)
    hook.remove()
    streams = captured["streams"].unflatten(-1, (4, C))
    spread = (streams - streams.mean(-2, keepdim=True)).abs().max()
    assert spread > 1e-3, "streams stayed identical: mHC degenerated into a plain residual"
    # swapping two distinct streams entering layer 1 changes the output
    swap = layers[1].register_forward_pre_hook(
        lambda m, args: (args[0].unflatten(-1, (4, C))[..., [1, 0, 2, 3], :].flatten(-2), *args[1:]))
    with torch.no_grad():
        permuted = run(model, x)
    swap.remove()
    assert (permuted - reference).abs().max() > 1e-4


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_mhc_wraps_blocks_that_hold_lora_adapters(arch):
    # The engine's order: LoRA injected into the blocks first (peft), then mHC around the same blocks.
    model = tiny(arch)
    x = inputs()
    with torch.no_grad():
        reference = run(model.eval(), x)
    targets = ["q_proj", "v_proj"] if arch == "llama" else ["c_attn"]
    inject_adapter_in_model(LoraConfig(r=4, target_modules=targets, fan_in_fan_out=arch == "gpt2"), model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    apply_mhc_to_transformer(model, C, layer_indices=[1, 2, 3])
    with torch.no_grad():
        assert torch.allclose(run(model, x), reference, atol=1e-5)  # LoRA B = 0 and mHC preserve the function
    model.train()
    run(model, x).pow(2).mean().backward()
    lora = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)
    assert all(p.grad is not None for p in mhc_parameters(model))
    assert not any("lora_" in n for layer in find_mhc_layers(model) for n, p in layer.named_parameters()
                   if any(p is q for q in mhc_parameters(model)))


def test_mhc_finds_the_blocks_inside_a_peft_model():
    model = get_peft_model(tiny("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    x = inputs()
    with torch.no_grad():
        reference = run(model.eval(), x)
        assert apply_mhc_to_transformer(model, C) is model
        assert torch.allclose(run(model, x), reference, atol=1e-5)
    assert len(find_mhc_layers(model)) == 4
    assert all(p.requires_grad for p in mhc_parameters(model))


def test_bf16_inputs_give_finite_outputs():
    model = tiny("llama").eval()
    apply_mhc_to_transformer(model, C)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = run(model, inputs())
    assert torch.isfinite(out.float()).all()
    model = model.to(torch.bfloat16)
    with torch.no_grad():
        out = run(model, inputs().bfloat16())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_state_dict_round_trip_restores_outputs():
    model = tiny("llama").train()
    apply_mhc_to_transformer(model, C)
    x = train_steps(model, steps=3)
    state = model.state_dict()
    fresh = tiny("llama")
    apply_mhc_to_transformer(fresh, C)
    fresh.load_state_dict(state)
    model.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(run(model, x), run(fresh, x))
    assert any(k.endswith("hc.phi") for k in state)


@pytest.mark.parametrize("arch", ARCHS)
def test_output_hidden_states_equal_the_unwrapped_models_at_init(arch):
    model = tiny(arch).eval()
    x = inputs()
    with torch.no_grad():
        reference = model(inputs_embeds=x, output_hidden_states=True).hidden_states
        apply_mhc_to_transformer(model, C, layer_indices=[1, 2])
        wrapped = model(inputs_embeds=x, output_hidden_states=True).hidden_states
    assert len(wrapped) == len(reference) == 5
    for ours, theirs in zip(wrapped, reference):
        assert ours.shape == x.shape and torch.allclose(ours, theirs, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_values_and_gradients():
    model = tiny("llama")
    apply_mhc_to_transformer(model, C, layer_indices=[1, 2])
    with torch.no_grad():
        for p in mhc_parameters(model):
            p.add_(torch.randn_like(p) * 0.05)  # away from init, so that every gradient is non-trivial
    x = inputs()
    model.train()
    reference = run(model, x)
    reference.pow(2).mean().backward()
    grads = [p.grad.clone() for p in mhc_parameters(model)]
    model.zero_grad()
    model.gradient_checkpointing_enable()
    checkpointed = run(model, x)
    checkpointed.pow(2).mean().backward()
    assert torch.allclose(checkpointed, reference, atol=1e-6)
    for g, p in zip(grads, mhc_parameters(model)):
        assert torch.allclose(p.grad, g, atol=1e-6)


def test_bad_layer_indices_and_unknown_architectures_raise_clear_errors():
    with pytest.raises(ConfigError, match=r"0\.\.3"):
        apply_mhc_to_transformer(tiny("llama"), C, layer_indices=[0, 4])
    with pytest.raises(ConfigError, match=r"0\.\.3"):
        apply_mhc_to_transformer(tiny("llama"), C, layer_indices=[])
    with pytest.raises(ConfigError, match="cannot find the transformer blocks"):
        apply_mhc_to_transformer(torch.nn.Sequential(torch.nn.Linear(C, C)), C)
    with pytest.raises(ConfigError, match="several block lists"):
        apply_mhc_to_transformer(torch.nn.ModuleDict({"a": tiny("llama", 2), "b": tiny("gpt2", 2)}), C)
    model = apply_mhc_to_transformer(tiny("gpt2"), C)
    with pytest.raises(ConfigError, match="already wrapped"):
        apply_mhc_to_transformer(model, C)
    with pytest.raises(ConfigError, match="hidden_size"):
        apply_mhc_to_transformer(tiny("bert"), 48)
    with pytest.raises(ConfigError, match="projection"):
        apply_mhc_to_transformer(tiny("llama"), C, projection="softmax")
