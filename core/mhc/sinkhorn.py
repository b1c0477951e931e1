"""Sinkhorn-Knopp projection of square matrices onto the doubly stochastic matrices (Birkhoff polytope).

Shapes: ``[..., n, n]`` (any leading batch dimensions; rows are the second-to-last axis), or ``[n, n, batch]``
for :func:`sinkhorn_knopp_batch_last`.

Given logits L, Sinkhorn-Knopp finds diagonal scalings D1, D2 with D1 exp(L) D2 doubly stochastic
(Sinkhorn & Knopp 1967) by alternately normalising columns and rows: M(t) = T_r(T_c(M(t-1))) from
M(0) = exp(L), t_max = 20 in mHC (arXiv 2512.24880, §4.2, eq. 9). Rows are normalised last, so row sums are
exact up to float rounding: H_res acts on the streams as ``x_next = H_res @ x``, and exact rows mean a constant
signal keeps its gain exactly. Columns carry the residual error, which shrinks with the iteration count.

Two numerically different forms of the same iteration:
- log domain (default): L <- L - logsumexp over each column, then over each row. Finite for any finite logits
  (tested at +-1e4), since it never exponentiates before normalising.
- plain domain: P = exp(L - max L), then P <- P / column sums, P <- P / row sums. Cheaper (no exp or log per
  iteration) and equal to the log domain for bounded logits; for logit spreads beyond ~80 (float32) entries
  underflow and whole rows can become 0 / 0. mHC clamps its logits, so it uses this form.

Speed (the reason for the custom autograd functions below): on a CPU, 20 iterations over thousands of 4 x 4
matrices cost almost nothing in arithmetic; the time goes into launching operations, and into reductions and
broadcasts over axes of length 4, which vectorise badly. So the iteration runs on a batch-last layout
[n, n, batch], where every sum and every broadcast runs along the long, contiguous batch axis, and the
backward pass is written out by hand (three operations per half-step instead of autograd's graph of
them). It is the exact gradient of the unrolled 20 iterations (checked by gradcheck and against autograd
through the plain loop, ``fused=False``). To save memory it keeps only each half-step's sums (n x batch)
and rebuilds each intermediate matrix backwards from the output, as the paper's kernel recomputes them (§4.4).
With 8 x 8 matrices the log domain's exps dominate instead: its forward is torch's fused log-softmax, and its
backward rebuilds the matrices by those n x batch scalings too, with no exp over them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

# Half-step order: dim 0 sums over rows i (column sums, T_c), then dim 1 sums over columns j (row sums, T_r).
_HALF_STEPS = (0, 1)


class _NoSave:
    """Stands in for autograd's ctx when no gradient is needed: nothing is kept."""

    def save_for_backward(self, *tensors):
        pass


class _PlainSinkhorn(torch.autograd.Function):
    """Plain-domain Sinkhorn on [n, n, B]; backward through y = x / s is g_x = (g_y - sum(g_y * y)) / s."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, n_iters: int) -> torch.Tensor:
        # The shift by the per-matrix max leaves the result unchanged (Sinkhorn ignores a common scale of its
        # input), so its gradient contribution sums to zero and the backward below leaves it out.
        p = torch.exp(logits - logits.amax(dim=(0, 1), keepdim=True))
        sums = []
        for _ in range(n_iters):
            for dim in _HALF_STEPS:
                s = p.sum(dim, keepdim=True)
                p.div_(s)
                sums.append(s)
        ctx.save_for_backward(p, *sums)
        return p

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        # Carried as h = g * y (gradient times the matrix it belongs to), which saves two operations per
        # half-step: with x = y s and g_x = (g - c) / s, c = sum(g * y), the product is h_x = g_x x = h - c y.
        # At the start, h = g exp(L - max L) is the gradient with respect to the logits.
        out, *sums = ctx.saved_tensors
        last = len(sums) - 1
        # The last half-step in the g form: a gradient that is constant along the normalised axis (H_res mixing
        # identical streams) then cancels exactly instead of leaving rounding noise for the steps before it.
        # A gradient arriving through a permute keeps its strides through every op below unless made dense.
        g = grad.contiguous()
        g = torch.sub(g, (g * out).sum(_HALF_STEPS[last % 2], keepdim=True)).div_(sums[last])
        y = out * sums[last]  # the input of the last half-step
        h = g.mul_(y)
        for k in range(last - 1, -1, -1):
            dim, s = _HALF_STEPS[k % 2], sums[k]
            h.addcmul_(y, h.sum(dim, keepdim=True), value=-1.0)
            if k:
                y.mul_(s)  # the input of this half-step
        return h, None


class _LogSinkhorn(torch.autograd.Function):
    """Log-domain Sinkhorn on [n, n, B]: each half-step is f' = log_softmax(f) along the normalised axis (torch's
    fused kernel: one pass of exp, which is most of the time), whose gradient is g_f = g' - P' sum(g') with
    P' = exp(f') the half-step's output as a matrix.

    The backward pass needs no exp over the matrices: P' of the half-step before is this one's times
    exp(lse) (lse = f - f', constant along the axis), n x B numbers per half-step. From the second half-step on
    its input is a log-softmax (<= 0), so lse <= log n and exp(lse) cannot overflow, for any logits; an
    underflow makes an entry below float's smallest normal 0, an absolute error of that size. Only the output
    and those n x B factors are kept."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, n_iters: int) -> torch.Tensor:
        keep = not isinstance(ctx, _NoSave)
        f = logits
        scales = []
        for i in range(n_iters):
            for dim in _HALF_STEPS:
                out = F.log_softmax(f, dim)
                if keep and (i or dim):
                    # lse = max f + log(sum exp(f - max f)), and the largest output is exactly -log(sum ...):
                    # read off where both are small, not at an entry far below the max (a cancellation)
                    scales.append(f.amax(dim, keepdim=True).sub_(out.amax(dim, keepdim=True)).exp_())
                f = out
        out = f.exp_()
        if keep:
            ctx.save_for_backward(out, *scales)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        out, *scales = ctx.saved_tensors
        g = grad.contiguous() * out  # the gradient with respect to the last half-step's output f
        p = out  # exp of the current half-step's output; the saved output itself is never modified
        for k in range(len(scales), -1, -1):
            g.addcmul_(p, g.sum(_HALF_STEPS[k % 2], keepdim=True), value=-1.0)
            if k:
                p = p * scales[k - 1] if p is out else p.mul_(scales[k - 1])
        return g, None


def _check(logits: torch.Tensor, n_iters: int, square_dims: tuple[int, int]) -> None:
    a, b = square_dims
    if logits.ndim < 2 or logits.shape[a] != logits.shape[b]:
        raise ValueError(f"sinkhorn_knopp needs square matrices; got shape {tuple(logits.shape)}")
    if n_iters < 1:
        raise ValueError(f"n_iters must be >= 1; got {n_iters}")


def sinkhorn_knopp_batch_last(logits: torch.Tensor, n_iters: int = 20, log_domain: bool = True) -> torch.Tensor:
    """Doubly stochastic matrices from ``logits`` laid out [n, n, batch] (row i, column j, then the batch).

    The layout mHC produces its H_res logits in; see the module docstring for why it is the fast one. Returns
    the same layout and dtype; half-precision input is computed in float32 (paper §4.4).
    """
    _check(logits, n_iters, (0, 1))
    dtype = logits.dtype
    x = logits.float() if dtype in (torch.float16, torch.bfloat16) else logits
    fn = _LogSinkhorn if log_domain else _PlainSinkhorn
    if torch.is_grad_enabled() and x.requires_grad:
        out = fn.apply(x.contiguous(), n_iters)
    else:
        with torch.no_grad():
            out = fn.forward(_NoSave(), x.contiguous(), n_iters)
    return out.to(dtype)


def _reference_sinkhorn(logits: torch.Tensor, n_iters: int, log_domain: bool) -> torch.Tensor:
    """The same iteration as plain autograd code on [..., n, n]: the readable form, and a cross-check."""
    if log_domain:
        log_p = logits
        for _ in range(n_iters):
            log_p = log_p - torch.logsumexp(log_p, dim=-2, keepdim=True)
            log_p = log_p - torch.logsumexp(log_p, dim=-1, keepdim=True)
        return log_p.exp()
    p = torch.exp(logits - logits.amax(dim=(-2, -1), keepdim=True))
    for _ in range(n_iters):
        p = p / p.sum(dim=-2, keepdim=True)
        p = p / p.sum(dim=-1, keepdim=True)
    return p


def sinkhorn_knopp(logits: torch.Tensor, n_iters: int = 20, log_domain: bool = True, fused: bool = True
                   ) -> torch.Tensor:
    """Doubly stochastic matrices from ``logits`` [..., n, n] after ``n_iters`` column-then-row passes.

    Differentiable; the gradient is that of the unrolled iterations. ``fused=False`` runs the same iteration
    as plain autograd code (slower, same values to float rounding). The result has the logits' shape and dtype.
    """
    _check(logits, n_iters, (-2, -1))
    if not fused:
        return _reference_sinkhorn(logits, n_iters, log_domain)
    n = logits.shape[-1]
    lead = logits.shape[:-2]
    batch_last = logits.reshape(-1, n, n).permute(1, 2, 0)
    out = sinkhorn_knopp_batch_last(batch_last, n_iters, log_domain)
    return out.permute(2, 0, 1).reshape(*lead, n, n)


class SinkhornKnopp(nn.Module):
    """Module form of :func:`sinkhorn_knopp`, so the iteration count shows up in ``print(model)``."""

    def __init__(self, n_iters: int = 20, log_domain: bool = True):
        super().__init__()
        if n_iters < 1:
            raise ValueError(f"n_iters must be >= 1; got {n_iters}")
        self.n_iters = int(n_iters)
        self.log_domain = bool(log_domain)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return sinkhorn_knopp(logits, self.n_iters, self.log_domain)

    def extra_repr(self) -> str:
        return f"n_iters={self.n_iters}, log_domain={self.log_domain}"


def doubly_stochastic_error(matrices) -> tuple[float, float]:
    """(max |row sum - 1|, max |column sum - 1|) over a [..., n, n] torch tensor or numpy array."""
    if isinstance(matrices, torch.Tensor):
        matrices = matrices.detach().double().cpu().numpy()
    m = np.asarray(matrices, dtype=np.float64)
    return float(np.abs(m.sum(-1) - 1).max()), float(np.abs(m.sum(-2) - 1).max())
