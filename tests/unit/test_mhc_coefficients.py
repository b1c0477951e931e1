"""The compiled coefficient pass (core/mhc/coefficients.py) against an independent plain-autograd form of the same
mathematics, and the wrapped layer's kernel path against its torch path."""

import pytest
import torch
from transformers import LlamaConfig, LlamaModel

from core.mhc.coefficients import BLOCK, mixing_coefficients
from core.mhc.layer import apply_mhc_to_transformer, find_mhc_layers
from core.mhc.sinkhorn import _reference_sinkhorn

N_STREAMS, ITERS, BOUND = 4, 20, 3.0


def _reference(logits, head):
    """eq. 8 and the layer's mixing rows written as plain autograd code, float64, token first."""
    n = N_STREAMS
    pre = torch.sigmoid(logits[:, :n])
    post = 2 * torch.sigmoid(logits[:, n:2 * n])
    res = logits[:, 2 * n:].view(-1, n, n)
    res = (res - res.mean(1, keepdim=True)).clamp(-BOUND, BOUND)  # the column's mean over its rows
    h_res = _reference_sinkhorn(res, ITERS, log_domain=False)
    eff = h_res - post.unsqueeze(-1) * pre.unsqueeze(-2)  # [N, n, n]
    written = post
    if head is not None:
        eff = torch.einsum("i,tij->tj", head, eff).unsqueeze(1)
        written = (post @ head).unsqueeze(-1)
    return torch.cat([pre.unsqueeze(1), eff], 1), written.unsqueeze(-1), (pre, post, h_res)


def _logits(tokens, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(tokens, 2 * N_STREAMS + N_STREAMS ** 2, generator=g, dtype=torch.float64) * 2
    logits[:, 2 * N_STREAMS:] *= 2  # some H_res logits beyond the bound after centring: the clamp's mask counts
    return logits


@pytest.mark.parametrize("with_head", [False, True])
def test_kernel_equals_plain_autograd_forward_and_backward(with_head):
    tokens = 2 * BLOCK + 7  # two whole blocks and a partial one
    logits = _logits(tokens, 0).requires_grad_()
    head = torch.softmax(torch.tensor([0.3, -0.2, 0.5, 0.1], dtype=torch.float64), 0).requires_grad_(with_head)
    head_arg = head if with_head else None
    a, post, h_pre, h_post, h_res = mixing_coefficients(logits, head_arg, N_STREAMS, ITERS, BOUND)
    ref_a, ref_post, (ref_pre, ref_hpost, ref_res) = _reference(logits, head_arg)
    assert a.shape == (tokens, 1 + (1 if with_head else N_STREAMS), N_STREAMS)
    for got, want in ((a, ref_a), (post, ref_post), (h_pre, ref_pre), (h_post, ref_hpost), (h_res, ref_res)):
        torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-12)
    clamped = ((logits[:, 2 * N_STREAMS:].view(-1, 4, 4) - logits[:, 2 * N_STREAMS:].view(-1, 4, 4).mean(1, True))
               .abs() > BOUND)
    assert clamped.any() and not clamped.all()

    g = torch.Generator().manual_seed(1)
    ga, gp = torch.randn(a.shape, generator=g, dtype=a.dtype), torch.randn(post.shape, generator=g, dtype=a.dtype)
    inputs = (logits, head) if with_head else (logits,)
    got = torch.autograd.grad((a, post), inputs, (ga, gp))
    want = torch.autograd.grad((ref_a, ref_post), inputs, (ga, gp))
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-11)


def test_kernel_passes_gradcheck_with_and_without_a_read_out():
    logits = _logits(5, 2).requires_grad_()
    head = torch.softmax(torch.randn(N_STREAMS, dtype=torch.float64), 0).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: mixing_coefficients(x, None, N_STREAMS, ITERS, BOUND)[:2], (logits,))
    assert torch.autograd.gradcheck(lambda x, w: mixing_coefficients(x, w, N_STREAMS, ITERS, BOUND)[:2],
                                    (logits, head))


def test_kernel_rows_are_exactly_stochastic_and_float32_stays_float32():
    logits = _logits(300, 3).float()
    _, _, _, _, h_res = mixing_coefficients(logits, None, N_STREAMS, ITERS, BOUND)
    assert h_res.dtype == torch.float32
    torch.testing.assert_close(h_res.sum(-1), torch.ones(300, N_STREAMS), rtol=0, atol=1e-6)


def _llama(dynamic, **fields):
    torch.manual_seed(0)
    model = LlamaModel(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                                   num_key_value_heads=4, vocab_size=10))
    apply_mhc_to_transformer(model, 32, dynamic=dynamic, **fields)
    with torch.no_grad():  # away from the initial values, where several terms vanish
        for layer in find_mhc_layers(model):
            for p in layer.hc.parameters():
                p.add_(torch.randn_like(p) * 0.3)
            if layer.collapse:
                layer.head_logits.add_(torch.randn_like(layer.head_logits))
    return model


@pytest.mark.parametrize("dynamic, fields", [(True, {}), (False, {}), (True, {"n_streams": 3}),
                                            (True, {"n_streams": 2, "layer_indices": [0, 2]})])
def test_wrapped_model_gives_the_torch_paths_outputs_gradients_and_mappings(dynamic, fields):
    """The default stack, static mappings, three streams, and two one-layer stacks (each layer both first and
    last)."""
    model = _llama(dynamic, **fields)
    x = torch.randn(3, 7, 32)
    results = []
    for use_kernel in (True, False):
        for layer in find_mhc_layers(model):
            layer.use_kernel = use_kernel
        model.zero_grad()
        out = model(inputs_embeds=x).last_hidden_state
        out.square().mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        maps = [layer.mappings() for layer in find_mhc_layers(model)]
        results.append((out.detach(), grads, maps))
    (out_k, grads_k, maps_k), (out_t, grads_t, maps_t) = results
    torch.testing.assert_close(out_k, out_t, rtol=1e-5, atol=1e-6)
    assert grads_k.keys() == grads_t.keys() and any(".hc." in n for n in grads_k)
    for name in grads_t:
        torch.testing.assert_close(grads_k[name], grads_t[name], rtol=1e-4, atol=1e-6, msg=name)
    for got, want in zip(maps_k, maps_t):
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6)


def test_the_torch_path_serves_mhc_lite_and_other_devices():
    model = LlamaModel(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=4, vocab_size=10))
    apply_mhc_to_transformer(model, 32, projection="permutations")
    layer = find_mhc_layers(model)[0]
    assert not layer._use_kernel(torch.zeros(2, 32))
    model = _llama(True)
    layer = find_mhc_layers(model)[0]
    assert layer._use_kernel(torch.zeros(2, 32)) and not layer._use_kernel(torch.zeros(2, 32, device="meta"))


def _stream_inputs(tokens, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    m, width = 2 * N_STREAMS + N_STREAMS ** 2, N_STREAMS * 3
    x = torch.randn(tokens, width, generator=g, dtype=dtype)
    phi = torch.randn(m, width, generator=g, dtype=dtype) * 0.5
    gates = torch.rand(m, generator=g, dtype=dtype) + 0.5
    bias = torch.randn(m, generator=g, dtype=dtype)
    head = torch.softmax(torch.randn(N_STREAMS, generator=g, dtype=dtype), 0)
    return x, phi, gates, bias, head


def _block(u):
    """A stand-in for the wrapped block: nonlinear, so that H_pre and H_post get gradients (with an identity block
    x_next = H_res x, and theirs cancel)."""
    return torch.tanh(u) * 1.5 + 0.1 * u.square()


def _layer_reference(x, phi, gates, bias, head):
    """A dynamic layer inside a stack as plain autograd code: RMS norm, projection, logits, coefficients, the block
    input, the block, the next streams."""
    inv_rms = torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-6)
    logits = bias + gates * (x @ phi.t()) * inv_rms
    a, post, _ = _reference(logits, head)
    streams = x.view(x.shape[0], N_STREAMS, -1)
    u = (a[:, :1] @ streams).squeeze(1)
    out = a[:, 1:] @ streams + post * _block(u).unsqueeze(1)
    return u, a, post, out.flatten(1)


def _layer_on_kernels(x, phi, gates, bias, head=None, linked=True):
    from core.mhc.streams import GradientLink, stream_read, stream_write

    link = GradientLink() if linked else None
    u, a, post, *_ = stream_read(x, phi, gates, bias, head, N_STREAMS, ITERS, BOUND, 1e-6, link)
    return u, a, post, stream_write(x, a, post, _block(u), link)


@pytest.mark.parametrize("with_head", [False, True])
def test_stream_kernels_equal_plain_autograd_and_pass_gradcheck(with_head):
    x, phi, gates, bias, head = (t.requires_grad_() for t in _stream_inputs(BLOCK + 3, 4))
    head_arg = head if with_head else None
    got = _layer_on_kernels(x, phi, gates, bias, head_arg)
    want = _layer_reference(x, phi, gates, bias, head_arg)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b.detach(), rtol=1e-12, atol=1e-12)
    inputs = (x, phi, gates, bias, head) if with_head else (x, phi, gates, bias)
    g = torch.Generator().manual_seed(5)
    grads_out = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in want]
    want_grads = torch.autograd.grad(want, inputs, grads_out)
    for linked in (True, False):  # the write's gradient of x handed over through the link, or added by autograd
        got_grads = torch.autograd.grad(_layer_on_kernels(*inputs[:4], head_arg, linked=linked), inputs, grads_out)
        for a, b in zip(got_grads, want_grads):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)

    small = [x.detach()[:4].clone().requires_grad_(), *inputs[1:]]
    assert torch.autograd.gradcheck(_layer_on_kernels, small)


def test_stream_write_of_a_stacks_first_layer_is_the_rows_times_h():
    from core.mhc.streams import stream_write

    g = torch.Generator().manual_seed(7)
    h, y = (torch.randn(9, 5, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    rows = torch.randn(9, 1 + N_STREAMS, 1, generator=g, dtype=torch.float64, requires_grad=True)
    post = torch.rand(9, N_STREAMS, 1, generator=g, dtype=torch.float64, requires_grad=True)
    want = (rows[:, 1:] * h.unsqueeze(1) + post * y.unsqueeze(1)).flatten(1)
    torch.testing.assert_close(stream_write(h, rows, post, y), want, rtol=1e-13, atol=1e-13)
    assert torch.autograd.gradcheck(stream_write, (h, rows, post, y))


def test_a_bfloat16_model_mixes_its_streams_through_torch_and_stays_bfloat16():
    import copy

    model = _llama(True)
    model16 = copy.deepcopy(model).bfloat16()
    x = torch.randn(2, 5, 32)
    want = model(inputs_embeds=x).last_hidden_state
    got = model16(inputs_embeds=x.bfloat16()).last_hidden_state
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.detach(), rtol=5e-2, atol=5e-2)
    got.float().square().mean().backward()
    grads = [p.grad for p in model16.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.bfloat16 and torch.isfinite(g.float()).all() for g in grads)
