import math

import numpy as np
import ot
import pytest
import torch

from core.sinkhorn import SinkhornKnopp, doubly_stochastic_error, sinkhorn_knopp


def random_logits(batch, n, scale, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, n, n, generator=gen, dtype=torch.float64) * scale).to(dtype)


@pytest.mark.parametrize("log_domain", [True, False])
def test_sinkhorn_output_is_doubly_stochastic_after_20_iterations(log_domain):
    # Logits ~ N(0, 1), the regime mHC keeps H_res in: worst column error of 2,000 matrices measured 7e-5.
    m = sinkhorn_knopp(random_logits(2000, 4, scale=1.0), n_iters=20, log_domain=log_domain)
    rows, cols = doubly_stochastic_error(m)
    assert rows < 1e-6  # rows are normalised last: exact up to rounding
    assert cols < 1e-3
    assert (m >= 0).all()


def test_sinkhorn_error_against_iterations_at_logit_scale_5():
    # At logit scale 5 (entries spanning e^+-15) no Sinkhorn converges in 20 iterations: measured worst column
    # error over 2,000 matrices 0.66 / 0.081 / 0.026 / 0.0057 after 10 / 20 / 50 / 200 iterations, median
    # 0.009 after 20. This is why mHC clamps its H_res logits (core/mhc.py).
    logits = random_logits(2000, 4, scale=5.0, dtype=torch.float64)
    worst = {k: doubly_stochastic_error(sinkhorn_knopp(logits, n_iters=k))[1] for k in (10, 20, 50, 200)}
    assert list(worst.values()) == sorted(worst.values(), reverse=True)
    assert worst[20] < 0.1 and worst[200] < 1e-2
    median_20 = (sinkhorn_knopp(logits, n_iters=20).sum(-2) - 1).abs().amax(-1).median().item()
    assert median_20 < 0.02
    m = sinkhorn_knopp(logits, n_iters=20)
    assert doubly_stochastic_error(m)[0] < 1e-12


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


def test_huge_logits_stay_finite_in_log_domain():
    logits = random_logits(256, 4, scale=1.0).sign() * 1e4
    m = sinkhorn_knopp(logits, n_iters=20)
    assert torch.isfinite(m).all()
    assert doubly_stochastic_error(m)[0] < 1e-5


def test_gradients_pass_gradcheck_in_float64():
    for log_domain in (True, False):
        logits = random_logits(3, 4, scale=1.0, dtype=torch.float64).requires_grad_()
        assert torch.autograd.gradcheck(lambda x, ld=log_domain: sinkhorn_knopp(x, 10, ld), (logits,))


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


def test_product_of_doubly_stochastic_matrices_stays_doubly_stochastic():
    mats = sinkhorn_knopp(random_logits(60, 4, scale=1.0, dtype=torch.float64), n_iters=200)
    product = torch.linalg.multi_dot(list(mats))
    rows, cols = doubly_stochastic_error(product)
    assert rows < 1e-9 and cols < 1e-9


def test_log_and_plain_domain_agree_for_bounded_logits():
    logits = random_logits(500, 4, scale=3.0)
    assert torch.allclose(sinkhorn_knopp(logits, log_domain=True), sinkhorn_knopp(logits, log_domain=False),
                          atol=1e-6)


def test_module_wraps_function_and_rejects_bad_input():
    logits = random_logits(2, 3, scale=1.0)
    assert torch.equal(SinkhornKnopp(n_iters=7)(logits), sinkhorn_knopp(logits, n_iters=7))
    with pytest.raises(ValueError, match="square"):
        sinkhorn_knopp(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="n_iters"):
        SinkhornKnopp(n_iters=0)


def test_error_reader_accepts_numpy_and_torch():
    m = np.array([[0.5, 0.5], [0.25, 0.75]])
    assert doubly_stochastic_error(m) == pytest.approx((0.0, 0.25))
    assert doubly_stochastic_error(torch.tensor(m)) == pytest.approx((0.0, 0.25))
