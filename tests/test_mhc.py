import math

import pytest
import torch
from transformers import BertConfig, BertModel, GPT2Config, GPT2Model, LlamaConfig, LlamaModel
from transformers.models.deepseek_v4.configuration_deepseek_v4 import DeepseekV4Config
from transformers.models.deepseek_v4.modeling_deepseek_v4 import DeepseekV4HyperConnection

from core.errors import ConfigError
from core.mhc import apply_mhc_to_transformer, composite_gain, find_mhc_layers, mhc_parameters
from core.mhc_mappings import RES_DIAG_INIT, RES_LOGIT_BOUND, mHCMappings
from core.sinkhorn import doubly_stochastic_error, sinkhorn_knopp

C = 32


def tiny(arch: str, layers: int = 4):
    torch.manual_seed(0)
    if arch == "llama":
        cfg = LlamaConfig(hidden_size=C, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                          num_key_value_heads=4, vocab_size=64)
        return LlamaModel(cfg)
    if arch == "gpt2":
        return GPT2Model(GPT2Config(n_embd=C, n_layer=layers, n_head=4, vocab_size=64, bos_token_id=0,
                                    eos_token_id=0, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0))
    return BertModel(BertConfig(hidden_size=C, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=64,
                                vocab_size=64, hidden_dropout_prob=0, attention_probs_dropout_prob=0))


def inputs(seed=1):
    return torch.randn(2, 6, C, generator=torch.Generator().manual_seed(seed))


def run(model, x, **kw):
    return model(inputs_embeds=x, **kw).last_hidden_state


ARCHS = ["llama", "gpt2", "bert"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("layer_indices", [None, [1, 2], [0, 3]], ids=["all", "run", "two-runs"])
def test_mhc_wrapped_model_matches_unwrapped_at_init(arch, layer_indices):
    model = tiny(arch).eval()
    x = inputs()
    with torch.no_grad():
        reference = run(model, x)
        apply_mhc_to_transformer(model, C, layer_indices=layer_indices)
        wrapped = run(model, x)
    assert torch.allclose(wrapped, reference, atol=1e-5)
    assert len(find_mhc_layers(model)) == (4 if layer_indices is None else len(layer_indices))


@pytest.mark.parametrize("projection", ["sinkhorn", "permutations"])
def test_function_preservation_holds_for_static_and_permutation_variants(projection):
    model = tiny("llama").eval()
    x = inputs()
    with torch.no_grad():
        reference = run(model, x)
        apply_mhc_to_transformer(model, C, projection=projection, dynamic=False)
        assert torch.allclose(run(model, x), reference, atol=1e-5)


def train_steps(model, steps=6, lr=1e-2, seed=3):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x = inputs(seed)
    target = torch.randn_like(x)
    for _ in range(steps):
        opt.zero_grad()
        loss = (run(model, x) - target).pow(2).mean()
        loss.backward()
        opt.step()
    return x


def test_gradients_reach_every_mapping_parameter_and_h_res_moves():
    model = tiny("llama").train()
    apply_mhc_to_transformer(model, C)
    before = [layer.mappings()["h_res"] for layer in find_mhc_layers(model)]
    train_steps(model, steps=20)
    run(model, inputs(4)).pow(2).mean().backward()
    for layer in find_mhc_layers(model):
        for name, p in layer.named_parameters():
            if not name.startswith("block."):
                assert p.grad is not None and p.grad.abs().sum() > 0, f"layer {layer.layer_index} {name}: no gradient"
    moved = [(layer.mappings()["h_res"] - b).abs().max().item() for layer, b in zip(find_mhc_layers(model), before)]
    # The first layer mixes n identical copies of its input, so its H_res is inert by construction.
    assert moved[0] < 1e-6
    assert all(m > 1e-3 for m in moved[1:]), moved
    assert len(mhc_parameters(model)) == 4 * 5 + 1  # phi, alpha, b_pre, b_post, b_res per layer + read-out head


def test_streams_diverge_and_their_order_matters_after_training():
    model = tiny("llama").train()
    apply_mhc_to_transformer(model, C, layer_indices=[0, 1, 2])
    x = train_steps(model, steps=8)
    model.eval()
    layers = find_mhc_layers(model)
    captured = {}
    layers[1].register_forward_pre_hook(lambda m, args: captured.setdefault("streams", args[0].detach()))
    with torch.no_grad():
        reference = run(model, x)
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


def test_h_res_stays_doubly_stochastic_after_training():
    model = tiny("gpt2").train()
    apply_mhc_to_transformer(model, C)
    x = train_steps(model, steps=6)
    with torch.no_grad():
        run(model, x)
    for layer in find_mhc_layers(model):
        # per-token matrices, not only their mean
        streams = torch.randn(2, 6, 4, C)
        _, _, h_res = layer.hc(streams)
        rows, cols = doubly_stochastic_error(h_res)
        assert rows < 1e-6 and cols < 1e-2
        assert (layer.mappings()["h_pre"] >= 0).all() and (layer.mappings()["h_post"] >= 0).all()


def test_initial_h_res_matches_sinkhorn_of_scaled_identity_closed_form():
    n = 4
    h_res = mHCMappings(C, n).current()["h_res"]
    diag = math.exp(RES_DIAG_INIT) / (math.exp(RES_DIAG_INIT) + n - 1)
    assert torch.allclose(h_res.diagonal(), torch.full((n,), diag), atol=1e-6)
    assert torch.allclose(h_res.sum(-1), torch.ones(n), atol=1e-6)
    # mHC-lite starts at the same diagonal and is exact by construction
    lite = mHCMappings(C, n, projection="permutations").current()["h_res"]
    assert torch.allclose(lite.diagonal(), torch.full((n,), diag), atol=1e-5)
    rows, cols = doubly_stochastic_error(lite)
    assert rows < 1e-6 and cols < 1e-6


def test_permutation_projection_is_doubly_stochastic_to_float_precision():
    mappings = mHCMappings(C, 4, projection="permutations")
    with torch.no_grad():
        mappings.phi.normal_(0, 1.0)
        mappings.alpha.fill_(1.0)
    _, _, h_res = mappings(torch.randn(8, 5, 4, C) * 10)
    rows, cols = doubly_stochastic_error(h_res)
    assert rows < 1e-6 and cols < 1e-6


def test_composite_gain_over_60_layers_stays_bounded():
    # Bound stated in the README: with logits within +-3, 20 Sinkhorn iterations leave column errors < 5e-2 per
    # layer; rows are exact, so the row gain of the product is 1 and the column gain stays below 1.1 over 60 layers.
    gen = torch.Generator().manual_seed(0)
    mats = sinkhorn_knopp((torch.rand(60, 4, 4, generator=gen) * 2 - 1) * 3, n_iters=20)
    gain = composite_gain(list(mats))
    assert gain["row"] == pytest.approx(1.0, abs=1e-5)
    assert 0.9 < gain["col"] < 1.1
    assert composite_gain([torch.eye(4)] * 3) == {"row": 1.0, "col": 1.0}


def test_h_res_logits_are_bounded():
    mappings = mHCMappings(C, 4)
    with torch.no_grad():
        mappings.b_res.fill_(-1000.0).diagonal().fill_(1000.0)
    h_res = mappings.current()["h_res"]
    bound_diag = math.exp(2 * RES_LOGIT_BOUND) / (math.exp(2 * RES_LOGIT_BOUND) + 3)
    assert torch.allclose(h_res.diagonal(), torch.full((4,), bound_diag), atol=1e-5)


def test_mappings_equal_deepseek_v4_hyper_connection_with_same_weights():
    n, c = 4, 16
    cfg = DeepseekV4Config(hidden_size=c, hc_mult=n, hc_sinkhorn_iters=20, hc_eps=1e-6, rms_norm_eps=1e-6)
    theirs = DeepseekV4HyperConnection(cfg)
    ours = mHCMappings(c, n, sinkhorn_iters=20)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        theirs.fn.copy_(torch.randn(theirs.fn.shape, generator=gen) * 0.1)
        theirs.base.copy_(torch.randn(theirs.base.shape, generator=gen) * 0.5)
        theirs.scale.copy_(torch.tensor([0.7, 1.3, 0.9]))
        fn_pre, fn_post, fn_res = theirs.fn.split([n, n, n * n])
        b_pre, b_post, b_res = theirs.base.split([n, n, n * n])
        # DeepSeek mixes as comb^T @ streams; our H_res acts as H_res @ streams, so H_res = comb^T
        fn_res_t = fn_res.view(n, n, -1).transpose(0, 1).reshape(n * n, -1)
        ours.phi.copy_(torch.cat([fn_pre, fn_post, fn_res_t]))
        ours.b_pre.copy_(b_pre)
        ours.b_post.copy_(b_post)
        ours.b_res.copy_(b_res.view(n, n).t())
        ours.alpha.copy_(theirs.scale)
    streams = torch.randn(2, 5, n, c, generator=gen)
    with torch.no_grad():
        post, comb, collapsed = theirs(streams)
        h_pre, h_post, h_res = ours(streams)
    assert torch.allclose(h_post, post, atol=1e-5)
    assert torch.allclose(h_res, comb.transpose(-1, -2), atol=1e-5)
    assert torch.allclose((h_pre.unsqueeze(-1) * streams).sum(-2), collapsed, atol=1e-5)


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


def test_output_hidden_states_and_gradient_checkpointing_work():
    model = tiny("llama")
    apply_mhc_to_transformer(model, C, layer_indices=[1, 2])
    x = inputs()
    model.eval()
    with torch.no_grad():
        out = model(inputs_embeds=x, output_hidden_states=True)
    assert len(out.hidden_states) == 5 and all(h.shape == x.shape for h in out.hidden_states)
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
    with pytest.raises(ConfigError, match="cannot find the transformer blocks"):
        apply_mhc_to_transformer(torch.nn.Sequential(torch.nn.Linear(C, C)), C)
    model = apply_mhc_to_transformer(tiny("gpt2"), C)
    with pytest.raises(ConfigError, match="already wrapped"):
        apply_mhc_to_transformer(model, C)
    with pytest.raises(ConfigError, match="hidden_size"):
        apply_mhc_to_transformer(tiny("bert"), 48)
