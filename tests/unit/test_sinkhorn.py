import math

import numpy as np
import ot
import pytest
import torch
from hyper_connections.manifold_constrained_hyper_connections import log_domain_sinkhorn_knopps, sinkhorn_knopps

from core.mhc.sinkhorn import SinkhornKnopp, doubly_stochastic_error, sinkhorn_knopp, sinkhorn_knopp_batch_last


def random_logits(batch, n, scale, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, n, n, generator=gen, dtype=torch.float64) * scale).to(dtype)


@pytest.mark.parametrize("log_domain", [True, False])
def test_sinkhorn_output_is_doubly_stochastic_after_20_iterations(log_domain):
    # Logits ~ N(0, 1), the regime mHC keeps H_res in: worst column error of these 2,000 matrices is 2.6e-4.
    m = sinkhorn_knopp(random_logits(2000, 4, scale=1.0), n_iters=20, log_domain=log_domain)
    rows, cols = doubly_stochastic_error(m)
    assert rows < 1e-6  # rows are normalised last: exact up to rounding
    assert cols < 1e-3
    assert (m >= 0).all()


def test_sinkhorn_error_against_iterations_at_logit_scale_5():
    # At logit scale 5 (N(0, 25) logits: entries spanning e^+-15) Sinkhorn converges slowly. Measured on these
    # 2,000 matrices, worst column error after 10 / 20 / 50 / 1000 iterations: 0.47 / 0.081 / 0.026 / 1.1e-3;
    # after 20 iterations 26% of the matrices are within 1e-3 and the median is 9.6e-3. 20 iterations are
    # within 1e-3 for logits of scale 5 drawn uniformly in [0, 5) (99.9% of matrices) but not for N(0, 25):
    # this is why mHC bounds its H_res logits (core/mhc/mappings.py).
    logits = random_logits(2000, 4, scale=5.0, dtype=torch.float64)
    per_matrix = {k: (sinkhorn_knopp(logits, n_iters=k).sum(-2) - 1).abs().amax(-1) for k in (10, 20, 50, 1000)}
    worst = [per_matrix[k].max().item() for k in (10, 20, 50, 1000)]
    assert worst == sorted(worst, reverse=True)
    assert 0.05 < worst[1] < 0.1 and worst[3] < 2e-3
    assert 0.2 < (per_matrix[20] < 1e-3).double().mean().item() < 0.35
    uniform = torch.rand(2000, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 5
    within = ((sinkhorn_knopp(uniform, n_iters=20).sum(-2) - 1).abs().amax(-1) < 1e-3).double().mean().item()
    assert within > 0.99
    assert doubly_stochastic_error(sinkhorn_knopp(logits, n_iters=20))[0] < 1e-12


def test_large_diagonal_logits_give_near_identity():
    m = sinkhorn_knopp(torch.eye(4) * 30.0, n_iters=20)
    assert torch.allclose(m, torch.eye(4), atol=1e-6)


@pytest.mark.parametrize("tau", [1.0, 4.0, 8.0])
def test_sinkhorn_of_scaled_identity_matches_closed_form(tau):
    # exp(tau I) has equal row and column sums, so one pass is exact: diagonal e^tau / (e^tau + n - 1)
    n = 4
    m = sinkhorn_knopp(torch.eye(n, dtype=torch.float64) * tau, n_iters=20)
    diag = math.exp(tau) / (math.exp(tau) + n - 1)
    off = 1.0 / (math.exp(tau) + n - 1)
    expected = torch.full((n, n), off, dtype=torch.float64).fill_diagonal_(diag)
    assert torch.allclose(m, expected, atol=1e-12)


def test_huge_logits_stay_finite_in_log_domain_with_finite_gradients():
    logits = (random_logits(256, 4, scale=1.0).sign() * 1e4).requires_grad_()
    m = sinkhorn_knopp(logits, n_iters=20)
    assert torch.isfinite(m).all()
    assert doubly_stochastic_error(m)[0] < 1e-5
    m.backward(torch.randn_like(m))
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("scale", [30.0, 300.0, 1e4])
def test_log_domain_float32_gradient_at_large_logits_matches_float64_autograd(scale):
    # The backward rebuilds each half-step's matrix from the next by exp(lse) per row or column. Read off at an
    # entry far below the max, lse loses its digits to cancellation (errors of 1e-4 here, against ~1e-6).
    logits = random_logits(256, 4, scale=scale, seed=3).double()  # the float32 values, so both see one input
    upstream = torch.randn(256, 4, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x64 = logits.clone().requires_grad_()
    reference = torch.autograd.grad(sinkhorn_knopp(x64, 20, fused=False), x64, upstream)[0]
    x32 = logits.float().requires_grad_()
    got = torch.autograd.grad(sinkhorn_knopp(x32, 20), x32, upstream.float())[0]
    assert reference.abs().max() > 1e-3
    assert (got.double() - reference).abs().max() < 1e-5


@pytest.mark.parametrize("log_domain", [True, False])
def test_gradients_pass_gradcheck_in_float64(log_domain):
    logits = random_logits(3, 4, scale=1.0, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: sinkhorn_knopp(x, 20, log_domain), (logits,))
    wide = random_logits(2, 8, scale=1.0, seed=1, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: sinkhorn_knopp(x, 5, log_domain), (wide,))


@pytest.mark.parametrize("log_domain", [True, False])
def test_fused_iteration_equals_plain_autograd_iteration_in_value_and_gradient(log_domain):
    # The hand-written backward against autograd through the readable loop, at float64 and logit scale 3.
    logits = random_logits(64, 4, scale=3.0, dtype=torch.float64).view(4, 16, 4, 4).requires_grad_()
    upstream = torch.randn(4, 16, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    values, grads = [], []
    for fused in (True, False):
        out = sinkhorn_knopp(logits, 20, log_domain, fused=fused)
        grads.append(torch.autograd.grad(out, logits, upstream)[0])
        values.append(out.detach())
    assert torch.allclose(values[0], values[1], atol=1e-13)
    assert torch.allclose(grads[0], grads[1], atol=1e-11)
    assert grads[0].abs().max() > 1e-2  # the comparison is not between two zeros


def test_batch_last_layout_equals_batch_first_and_keeps_input_untouched():
    logits = random_logits(10, 4, scale=2.0)
    batch_last = logits.permute(1, 2, 0).clone()
    before = batch_last.clone()
    for log_domain in (True, False):
        out = sinkhorn_knopp_batch_last(batch_last, 20, log_domain)
        assert torch.allclose(out.permute(2, 0, 1), sinkhorn_knopp(logits, 20, log_domain), atol=1e-7)
    assert torch.equal(batch_last, before)


def test_converged_result_equals_pot_sinkhorn():
    # POT solves the entropic OT plan diag(u) K diag(v) with marginals a, b; with K = exp(logits) and uniform
    # marginals 1/n its plan times n is the doubly stochastic scaling of exp(logits), which is unique.
    n = 5
    logits = random_logits(6, n, scale=1.0, dtype=torch.float64)
    ours = sinkhorn_knopp(logits, n_iters=500).numpy()
    uniform = np.full(n, 1.0 / n)
    for i in range(logits.shape[0]):
        # cost M with exp(-M / reg) = exp(logits) at reg = 1
        plan = ot.sinkhorn(uniform, uniform, -logits[i].numpy(), reg=1.0, stopThr=1e-14, numItermax=100000)
        assert np.abs(plan * n - ours[i]).max() < 1e-5


@pytest.mark.parametrize("n", [4, 8])
def test_twenty_iterations_equal_hyper_connections_sinkhorn(n):
    # lucidrains' hyper-connections runs the same column-then-row iteration: same matrices after 20 steps.
    logits = random_logits(300, n, scale=1.0)
    ours = sinkhorn_knopp(logits, 20)
    assert torch.allclose(ours, log_domain_sinkhorn_knopps(logits, 20), atol=1e-6)
    assert torch.allclose(sinkhorn_knopp(logits, 20, log_domain=False), sinkhorn_knopps(logits, 20), atol=1e-6)


def test_product_of_doubly_stochastic_matrices_stays_doubly_stochastic():
    mats = sinkhorn_knopp(random_logits(60, 4, scale=1.0, dtype=torch.float64), n_iters=200)
    product = torch.linalg.multi_dot(list(mats))
    rows, cols = doubly_stochastic_error(product)
    assert rows < 1e-9 and cols < 1e-9


def test_log_and_plain_domain_agree_for_bounded_logits():
    logits = random_logits(500, 4, scale=3.0)
    assert torch.allclose(sinkhorn_knopp(logits, log_domain=True), sinkhorn_knopp(logits, log_domain=False),
                          atol=1e-6)


def test_half_precision_input_is_computed_in_float32_and_returned_in_its_dtype():
    logits = random_logits(50, 4, scale=1.0)
    out = sinkhorn_knopp(logits.bfloat16())
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), sinkhorn_knopp(logits.bfloat16().float()), atol=4e-3)


def test_module_wraps_function_and_rejects_bad_input():
    logits = random_logits(2, 3, scale=1.0)
    assert torch.equal(SinkhornKnopp(n_iters=7)(logits), sinkhorn_knopp(logits, n_iters=7))
    assert "n_iters=7" in repr(SinkhornKnopp(n_iters=7))
    with pytest.raises(ValueError, match="square"):
        sinkhorn_knopp(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="n_iters"):
        SinkhornKnopp(n_iters=0)


def test_error_reader_accepts_numpy_and_torch():
    m = np.array([[0.5, 0.5], [0.25, 0.75]])
    assert doubly_stochastic_error(m) == pytest.approx((0.0, 0.25))
    assert doubly_stochastic_error(torch.tensor(m)) == pytest.approx((0.0, 0.25))
