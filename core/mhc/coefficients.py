"""An mHC layer's per-token mixing coefficients in one compiled pass forward and one backward (CPU).

From the m = 2n + n^2 logits of each token (core/mhc/mappings.py: bias + gate * projection) to the rows the layer
mixes its streams with, A = [H_pre; R (H_res - H_post H_pre^T)], and its write-out weights R H_post (R the read-out
of a stack's last layer, the identity elsewhere; core/mhc/layer.py). The same arithmetic as the torch path
(mHCMappings.batch_last, then mHCTransformerLayer._mixing_rows), which stays for other devices and for
torch.compile. Why a kernel: on a 4 x 4 matrix per token every torch operation is a dispatch of a few
microseconds over a few thousand numbers, and the chain is long: 20 Sinkhorn iterations are 80 operations forward
and about 120 backward, per layer and step. Here tokens go through in blocks of BLOCK, each inner loop over a
block's tokens (so it vectorises), in float64 (the coefficients come out in the logits' dtype, float32 from the
layer); the backward recomputes each block's forward instead of keeping it, which costs little next to the
dispatches it replaces.

Shapes: N tokens, n streams, m logits per token, r rows written out (n, or 1 with a read-out).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from torch.autograd.function import once_differentiable

BLOCK = 64  # tokens per pass: every inner loop runs over a block's tokens, so it vectorises
EXP_LIMIT = 40.0  # |x| the exp below serves; sigmoid(-40) = 4e-18, so its argument is clamped there
_TAYLOR = tuple(1.0 / math.factorial(k) for k in range(16))


@numba.njit(cache=True, error_model="numpy", inline="always")
def _exp(x):  # pragma: no cover (compiled)
    """e^x for |x| <= EXP_LIMIT: the Taylor polynomial of e^(x/64) (degree 15, |x/64| <= 0.625, truncation below
    1e-17) raised to the 64th power, relative error about 1e-14. Plain arithmetic, so the loops around it vectorise;
    numba's exp is one library call per value, and those calls were most of the forward pass."""
    y = x * 0.015625
    p = _TAYLOR[15]
    for k in range(14, -1, -1):  # Horner; the trip count is a constant, so the loop unrolls
        p = p * y + _TAYLOR[k]
    for _ in range(6):
        p = p * p
    return p


@numba.njit(cache=True, error_model="numpy", inline="always")
def _sigmoid(x):  # pragma: no cover (compiled)
    return 1.0 / (1.0 + _exp(-min(max(x, -EXP_LIMIT), EXP_LIMIT)))


@numba.njit(cache=True, error_model="numpy")
def _block_forward(proj, inv_rms, gates, bias, t0, width, n, iters, bound, lg, pre, post, kernel, rows, cols,
                   h):  # pragma: no cover (compiled)
    """Tokens t0 .. t0 + width, token last: their logits lg [m, B] (bias + gate * projection / rms), pre [n, B],
    post [n, B], K = exp of the bounded H_res logits kernel [n, n, B], the Sinkhorn scalings rows
    [iters + 1, n, B] and cols [iters, n, B], and H_res itself, h [n, n, B]."""
    m = proj.shape[1]
    for b in range(width):
        for q in range(m):
            lg[q, b] = bias[q] + gates[q] * (proj[t0 + b, q] * inv_rms[t0 + b])
    for i in range(n):
        for b in range(width):
            pre[i, b] = _sigmoid(lg[i, b])
            post[i, b] = 2.0 * _sigmoid(lg[n + i, b])
    mean = np.zeros(width)
    top = np.full(width, -np.inf)
    for j in range(n):  # each column's mean off, then the bound (Sinkhorn's column step ignores the shift)
        mean[:] = 0.0
        for i in range(n):
            for b in range(width):
                mean[b] += lg[2 * n + i * n + j, b]
        for i in range(n):
            for b in range(width):
                v = min(max(lg[2 * n + i * n + j, b] - mean[b] / n, -bound), bound)
                kernel[i, j, b] = v
                top[b] = max(top[b], v)
    for i in range(n):
        for j in range(n):
            for b in range(width):
                kernel[i, j, b] = _exp(kernel[i, j, b] - top[b])  # in [-2 bound, 0]
    # Sinkhorn as scalings: after t column-and-row steps the matrix is diag(r_t) K diag(c_t), with
    # c_t = 1 / (K^T r_(t-1)) and r_t = 1 / (K c_t) from r_0 = 1: the iterates of normalising K's columns and
    # rows in turn, with 2n numbers kept per step instead of n^2 and one pass over K per half-step.
    rows[0, :, :width] = 1.0
    for t in range(iters):
        for j in range(n):
            cols[t, j, :width] = 0.0
            for i in range(n):
                for b in range(width):
                    cols[t, j, b] += kernel[i, j, b] * rows[t, i, b]
            for b in range(width):
                cols[t, j, b] = 1.0 / cols[t, j, b]
        for i in range(n):
            rows[t + 1, i, :width] = 0.0
            for j in range(n):
                for b in range(width):
                    rows[t + 1, i, b] += kernel[i, j, b] * cols[t, j, b]
            for b in range(width):
                rows[t + 1, i, b] = 1.0 / rows[t + 1, i, b]
    for i in range(n):
        for j in range(n):
            for b in range(width):
                h[i, j, b] = rows[iters, i, b] * kernel[i, j, b] * cols[iters - 1, j, b]


@numba.njit(cache=True, error_model="numpy")
def _forward_kernel(proj, inv_rms, gates, bias, head, n, iters, bound, a, post_out, h_pre, h_post,
                    h_res):  # pragma: no cover (compiled)
    collapse = head.shape[0] > 0
    m = proj.shape[1]
    lg = np.empty((m, BLOCK))
    pre, post = np.empty((n, BLOCK)), np.empty((n, BLOCK))
    kernel, h = np.empty((n, n, BLOCK)), np.empty((n, n, BLOCK))
    rows, cols = np.empty((iters + 1, n, BLOCK)), np.empty((iters, n, BLOCK))
    for t0 in range(0, proj.shape[0], BLOCK):
        width = min(BLOCK, proj.shape[0] - t0)
        _block_forward(proj, inv_rms, gates, bias, t0, width, n, iters, bound, lg, pre, post, kernel, rows, cols, h)
        for b in range(width):
            t = t0 + b
            for i in range(n):
                h_pre[t, i] = pre[i, b]
                h_post[t, i] = post[i, b]
                a[t, 0, i] = pre[i, b]
                for j in range(n):
                    h_res[t, i, j] = h[i, j, b]
            if collapse:
                written = 0.0
                for i in range(n):
                    written += head[i] * post[i, b]
                post_out[t, 0, 0] = written
                for j in range(n):
                    acc = 0.0
                    for i in range(n):
                        acc += head[i] * (h[i, j, b] - post[i, b] * pre[j, b])
                    a[t, 1, j] = acc
            else:
                for i in range(n):
                    post_out[t, i, 0] = post[i, b]
                    for j in range(n):
                        a[t, 1 + i, j] = h[i, j, b] - post[i, b] * pre[j, b]


@numba.njit(cache=True, error_model="numpy")
def _backward_kernel(proj, inv_rms, gates, bias, head, n, iters, bound, width_x, grad_a, grad_post, grad_proj,
                     grad_bias, grad_gates, grad_scale, grad_head):  # pragma: no cover (compiled)
    """Writes grad_proj [N, m] (the gradient of the projection x phi^T) and grad_scale [N] (the rms term of the
    gradient of x: d inv_rms / dx = -inv_rms^3 x / width_x), and adds into grad_bias [m], grad_gates [m] and
    grad_head [n]."""
    collapse = head.shape[0] > 0
    m = proj.shape[1]
    grad_logits = np.empty((BLOCK, m))
    lg = np.empty((m, BLOCK))
    pre, post = np.empty((n, BLOCK)), np.empty((n, BLOCK))
    kernel, h = np.empty((n, n, BLOCK)), np.empty((n, n, BLOCK))
    rows, cols = np.empty((iters + 1, n, BLOCK)), np.empty((iters, n, BLOCK))
    g, g_kernel = np.empty((n, n, BLOCK)), np.empty((n, n, BLOCK))
    g_rows, g_cols = np.empty((n, BLOCK)), np.empty((n, BLOCK))
    s, c = np.empty(BLOCK), np.empty(BLOCK)
    for t0 in range(0, proj.shape[0], BLOCK):
        width = min(BLOCK, proj.shape[0] - t0)
        _block_forward(proj, inv_rms, gates, bias, t0, width, n, iters, bound, lg, pre, post, kernel, rows, cols, h)
        for b in range(width):
            t = t0 + b
            if collapse:
                written = 0.0
                for i in range(n):
                    written += head[i] * post[i, b]
                gp = grad_post[t, 0, 0]
                for i in range(n):
                    dot = 0.0
                    for j in range(n):
                        g[i, j, b] = head[i] * grad_a[t, 1, j]
                        dot += grad_a[t, 1, j] * pre[j, b]
                        grad_head[i] += grad_a[t, 1, j] * (h[i, j, b] - post[i, b] * pre[j, b])
                    grad_head[i] += gp * post[i, b]
                    g_post = head[i] * (gp - dot)
                    grad_logits[b, n + i] = g_post * post[i, b] * (1.0 - 0.5 * post[i, b])
                for j in range(n):
                    g_pre = grad_a[t, 0, j] - grad_a[t, 1, j] * written
                    grad_logits[b, j] = g_pre * pre[j, b] * (1.0 - pre[j, b])
            else:
                for i in range(n):
                    dot = 0.0
                    for j in range(n):
                        g[i, j, b] = grad_a[t, 1 + i, j]
                        dot += grad_a[t, 1 + i, j] * pre[j, b]
                    g_post = grad_post[t, i, 0] - dot
                    grad_logits[b, n + i] = g_post * post[i, b] * (1.0 - 0.5 * post[i, b])
                for j in range(n):
                    acc = 0.0
                    for i in range(n):
                        acc += grad_a[t, 1 + i, j] * post[i, b]
                    g_pre = grad_a[t, 0, j] - acc
                    grad_logits[b, j] = g_pre * pre[j, b] * (1.0 - pre[j, b])
        # back through the scalings. H = diag(r) K diag(c) gives K, r and c their parts of G = dL/dH; then each
        # step y = 1 / (M v) (M = K or K^T) passes -M^T (g_y y^2) to v and the outer product of -(g_y y^2) and v to K.
        rt, ct = rows[iters], cols[iters - 1]
        for i in range(n):
            g_rows[i, :width] = 0.0
        for j in range(n):
            g_cols[j, :width] = 0.0
        for i in range(n):
            for j in range(n):
                for b in range(width):
                    gh = g[i, j, b]
                    g_kernel[i, j, b] = gh * rt[i, b] * ct[j, b]
                    g_rows[i, b] += gh * kernel[i, j, b] * ct[j, b]
                    g_cols[j, b] += gh * rt[i, b] * kernel[i, j, b]
        for k in range(iters - 1, -1, -1):
            # rows[k + 1] = 1 / (K cols[k])
            for i in range(n):
                for b in range(width):
                    g_rows[i, b] = -g_rows[i, b] * rows[k + 1, i, b] * rows[k + 1, i, b]
            for i in range(n):
                for j in range(n):
                    for b in range(width):
                        g_kernel[i, j, b] += g_rows[i, b] * cols[k, j, b]
                        g_cols[j, b] += g_rows[i, b] * kernel[i, j, b]
            # cols[k] = 1 / (K^T rows[k]); rows[0] = 1 is a constant
            for j in range(n):
                for b in range(width):
                    g_cols[j, b] = -g_cols[j, b] * cols[k, j, b] * cols[k, j, b]
            for i in range(n):
                g_rows[i, :width] = 0.0
                for j in range(n):
                    for b in range(width):
                        g_kernel[i, j, b] += rows[k, i, b] * g_cols[j, b]
                        g_rows[i, b] += kernel[i, j, b] * g_cols[j, b]
            for j in range(n):
                g_cols[j, :width] = 0.0
        # exp (its max shift leaves the result unchanged, so it passes no gradient), the bound, the centring
        for j in range(n):
            s[:width] = 0.0
            for i in range(n):
                for b in range(width):
                    s[b] += lg[2 * n + i * n + j, b]
            c[:width] = 0.0
            for i in range(n):
                for b in range(width):
                    centred = lg[2 * n + i * n + j, b] - s[b] / n
                    inside = -bound <= centred <= bound
                    g[i, j, b] = g_kernel[i, j, b] * kernel[i, j, b] if inside else 0.0
                    c[b] += g[i, j, b]
            for i in range(n):
                for b in range(width):
                    grad_logits[b, 2 * n + i * n + j] = g[i, j, b] - c[b] / n
        # logit = bias + gate * projection * inv_rms
        for b in range(width):
            t = t0 + b
            dot = 0.0
            for q in range(m):
                gl = grad_logits[b, q]
                grad_bias[q] += gl
                grad_gates[q] += gl * proj[t, q] * inv_rms[t]
                grad_proj[t, q] = gl * gates[q] * inv_rms[t]
                dot += gl * gates[q] * proj[t, q]
            grad_scale[t] = -dot * inv_rms[t] ** 3 / width_x


def _numpy(t: torch.Tensor | None, dtype=np.float32) -> np.ndarray:
    """A contiguous host view for the kernels; None (no read-out) becomes an empty array."""
    if t is None:
        return np.empty(0, dtype=dtype)
    return t.detach().contiguous().numpy()


def _forward(proj, inv_rms, gates, bias, head, n, iters, bound):
    """Runs the forward kernel: (A [N, 1 + r, n], write-out [N, r, 1], h_pre [N, n], h_post [N, n], h_res [N, n, n])."""
    tokens, dtype = proj.shape[0], proj.dtype
    rows = 1 if head is not None else n
    out = (torch.empty(tokens, 1 + rows, n, dtype=dtype), torch.empty(tokens, rows, 1, dtype=dtype),
           torch.empty(tokens, n, dtype=dtype), torch.empty(tokens, n, dtype=dtype),
           torch.empty(tokens, n, n, dtype=dtype))
    arrays = [_numpy(t) for t in (proj, inv_rms, gates, bias)]
    _forward_kernel(*arrays, _numpy(head, arrays[0].dtype), n, iters, float(bound), *(t.numpy() for t in out))
    return out


def _backward(proj, inv_rms, gates, bias, head, n, iters, bound, width_x, grad_a, grad_post):
    """Runs the backward kernel: grad_proj [N, m], grad_bias [m], grad_gates [m], grad_scale [N], grad_head [n]."""
    tokens, dtype = proj.shape[0], proj.dtype
    rows = 1 if head is not None else n
    grad_a = torch.zeros(tokens, 1 + rows, n, dtype=dtype) if grad_a is None else grad_a.to(dtype)
    grad_post = torch.zeros(tokens, rows, 1, dtype=dtype) if grad_post is None else grad_post.to(dtype)
    grad_proj, grad_scale = torch.empty_like(proj), torch.empty(tokens, dtype=dtype)
    sums = np.zeros(bias.shape[0]), np.zeros(bias.shape[0]), np.zeros(n if head is not None else 0)
    arrays = [_numpy(t) for t in (proj, inv_rms, gates, bias)]
    _backward_kernel(*arrays, _numpy(head, arrays[0].dtype), n, iters, float(bound), width_x, _numpy(grad_a),
                     _numpy(grad_post), grad_proj.numpy(), *sums[:2], grad_scale.numpy(), sums[2])
    grad_bias, grad_gates, grad_head = (torch.from_numpy(a).to(dtype) for a in sums)
    return grad_proj, grad_bias, grad_gates, grad_scale, grad_head


def _as_projection(logits: torch.Tensor):
    """Logits passed to the kernels as a projection with unit scale and gates and zero bias, so that
    logit = bias + gate * projection * inv_rms is the logit itself and grad_proj its gradient."""
    (tokens, m), dtype = logits.shape, logits.dtype
    return logits, torch.ones(tokens, dtype=dtype), torch.ones(m, dtype=dtype), torch.zeros(m, dtype=dtype)


class MixingCoefficients(torch.autograd.Function):
    """(A [N, 1 + r, n], write-out [N, r, 1], h_pre [N, n], h_post [N, n], h_res [N, n, n]) from logits [N, m];
    ``head`` [n] (read-out weights summing to 1) or None. The last three are the mappings themselves, for the layer
    to remember, and carry no gradient."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, head: torch.Tensor | None, n: int, iters: int, bound: float):
        logits = logits.detach().contiguous()
        out = _forward(*_as_projection(logits), head, n, iters, bound)
        ctx.save_for_backward(logits, head)
        ctx.sizes = (n, iters, float(bound))
        ctx.mark_non_differentiable(*out[2:])
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_a, grad_post, *_):
        logits, head = ctx.saved_tensors
        n, iters, bound = ctx.sizes
        grad_logits, _, _, _, grad_head = _backward(*_as_projection(logits), head, n, iters, bound, 1, grad_a,
                                                    grad_post)
        return grad_logits, grad_head if ctx.needs_input_grad[1] else None, None, None, None


def mixing_coefficients(logits: torch.Tensor, head: torch.Tensor | None, n: int, iters: int, bound: float):
    """See :class:`MixingCoefficients`; logits float32 or float64 on the CPU."""
    return MixingCoefficients.apply(logits, head, n, iters, bound)
