"""An mHC layer's passes over its n streams as compiled CPU kernels: the read before the block and the write after it.

Why: at the sizes a fine-tune on a CPU runs (hundreds of tokens, C of 128-512) one layer's streams are N n C floats,
half a megabyte and more, and the step's working set does not stay in the core's cache, so what a layer costs
beyond its block is mostly passes over that memory (about 70 us each on the development machine, where the
same buffer takes 12 us when it is already cached). Torch spends about 22 of them per layer, forward and backward:
the norm, the projection and the mix read the streams separately, the mix writes rows the write-out reads again,
and autograd adds the two gradients that reach the streams in a pass of its own. Here the forward reads the
streams once for the norm and the block input (besides the projection's product), writes the next streams in one
pass after the block, and the backward writes each gradient once, about 14 passes in all.

- ``stream_read``: x [N, n c] -> block input u = H_pre x [N, c], the mixing rows A = [H_pre; R (H_res - H_post
  H_pre^T)] [N, 1 + r, n] and the write-out weights R H_post [N, r, 1] (core/mhc/coefficients.py has the rows'
  arithmetic), plus the mappings for the layer to remember. The projection x phi^T stays a torch product (MKL's
  is about three times faster than a compiled loop at these sizes).
- ``stream_write``: x_next = A[1:] x + post y per token, y the block's output [N, c].
- A stack's first layer, whose streams are E h, writes with x = h and A E as the rows (one "stream").

``GradientLink``: the gradient of x arrives from both passes. Instead of returning its part for autograd to add,
the write's backward (which always runs first: the read's outputs feed it) leaves it in the link, and the read's
backward adds its own part into that buffer.

Everything runs in the coefficients' dtype (phi's: float32 from the layer, float64 in gradcheck); the layer takes
the torch path for other stream dtypes. Sums are reassociated (fastmath "reassoc") so that they vectorise: the
results match torch's to rounding, not bit for bit, and are the same from run to run on one machine.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from torch.autograd.function import once_differentiable

from core.mhc.coefficients import _backward_kernel, _forward_kernel, _numpy

_JIT = dict(cache=True, error_model="numpy", fastmath={"reassoc", "contract"})


@numba.njit(**_JIT)
def _read_forward(x, proj, gates, bias, head, n, iters, bound, eps, zero, inv_rms, a, post, h_pre, h_post, h_res,
                  u):  # pragma: no cover (compiled)
    tokens, width = x.shape
    c_width = width // n
    for t in range(tokens):
        s = 0.0
        for k in range(width):
            s += x[t, k] * x[t, k]
        inv_rms[t] = 1.0 / np.sqrt(s / width + eps)
    _forward_kernel(proj, inv_rms, gates, bias, head, n, iters, bound, a, post, h_pre, h_post, h_res)
    for t in range(tokens):
        for c in range(c_width):
            u[t, c] = zero
        for j in range(n):
            w = a[t, 0, j]
            for c in range(c_width):
                u[t, c] += w * x[t, j * c_width + c]


@numba.njit(**_JIT)
def _read_backward(x, proj, inv_rms, gates, bias, head, n, iters, bound, zero, a, grad_u, grad_a, grad_post,
                   grad_proj, grad_bias, grad_gates, grad_scale, grad_head, grad_x):  # pragma: no cover (compiled)
    """Adds row 0's gradient (from u) into grad_a, runs the coefficient backward, then adds into grad_x the parts of
    u and of the norm; the projection's part (grad_proj phi) is the caller's product."""
    tokens, width = x.shape
    c_width = width // n
    for t in range(tokens):
        for j in range(n):
            s = zero
            for c in range(c_width):
                s += grad_u[t, c] * x[t, j * c_width + c]
            grad_a[t, 0, j] += s
    _backward_kernel(proj, inv_rms, gates, bias, head, n, iters, bound, width, grad_a, grad_post, grad_proj,
                     grad_bias, grad_gates, grad_scale, grad_head)
    for t in range(tokens):
        scale = grad_scale[t]
        for j in range(n):
            w = a[t, 0, j]
            for c in range(c_width):
                grad_x[t, j * c_width + c] += w * grad_u[t, c] + scale * x[t, j * c_width + c]


@numba.njit(**_JIT)
def _write_forward(x, a, post, y, out):  # pragma: no cover (compiled)
    tokens, width = x.shape
    rows, n = a.shape[1] - 1, a.shape[2]
    c_width = width // n
    for t in range(tokens):
        for i in range(rows):
            o, p = i * c_width, post[t, i, 0]
            for c in range(c_width):
                out[t, o + c] = p * y[t, c]
            for j in range(n):
                w = a[t, 1 + i, j]
                for c in range(c_width):
                    out[t, o + c] += w * x[t, j * c_width + c]


@numba.njit(**_JIT)
def _write_backward(x, a, post, y, grad, zero, grad_x, grad_a, grad_post, grad_y):  # pragma: no cover (compiled)
    tokens, width = x.shape
    rows, n = a.shape[1] - 1, a.shape[2]
    c_width = width // n
    for t in range(tokens):
        for c in range(c_width):
            grad_y[t, c] = zero
        for k in range(width):
            grad_x[t, k] = zero
        for j in range(n):
            grad_a[t, 0, j] = zero
        for i in range(rows):
            o, p = i * c_width, post[t, i, 0]
            s = zero
            for c in range(c_width):
                grad_y[t, c] += p * grad[t, o + c]
                s += grad[t, o + c] * y[t, c]
            grad_post[t, i, 0] = s
            for j in range(n):
                w = a[t, 1 + i, j]
                s = zero
                for c in range(c_width):
                    s += grad[t, o + c] * x[t, j * c_width + c]
                grad_a[t, 1 + i, j] = s
                for c in range(c_width):
                    grad_x[t, j * c_width + c] += w * grad[t, o + c]


class GradientLink:
    """Carries the write's gradient of the streams to the read's backward (see the module's docstring)."""

    __slots__ = ("grad_x",)

    def __init__(self):
        self.grad_x: torch.Tensor | None = None


def _arrays(*tensors):
    return [_numpy(t) for t in tensors]


def _zero(dtype: torch.dtype):
    return np.float32(0) if dtype == torch.float32 else np.float64(0)


class StreamRead(torch.autograd.Function):
    """See ``stream_read``."""

    @staticmethod
    def forward(ctx, x, phi, gates, bias, head, n: int, iters: int, bound: float, eps: float, link):
        tokens, width = x.shape
        dtype = x.dtype
        rows = 1 if head is not None else n
        proj = x @ phi.t()
        inv_rms, u = torch.empty(tokens, dtype=dtype), torch.empty(tokens, width // n, dtype=dtype)
        a, post = torch.empty(tokens, 1 + rows, n, dtype=dtype), torch.empty(tokens, rows, 1, dtype=dtype)
        h_pre, h_post = torch.empty(tokens, n, dtype=dtype), torch.empty(tokens, n, dtype=dtype)
        h_res = torch.empty(tokens, n, n, dtype=dtype)
        _read_forward(*_arrays(x, proj, gates, bias), _numpy(head, _zero(dtype).dtype), n, iters, float(bound),
                      float(eps), _zero(dtype), *_arrays(inv_rms, a, post, h_pre, h_post, h_res, u))
        ctx.save_for_backward(x, phi, proj, inv_rms, gates, bias, head, a)
        ctx.sizes, ctx.link = (n, iters, float(bound)), link
        ctx.mark_non_differentiable(h_pre, h_post, h_res)
        return u, a, post, h_pre, h_post, h_res

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_u, grad_a, grad_post, *_):
        x, phi, proj, inv_rms, gates, bias, head, a = ctx.saved_tensors
        n, iters, bound = ctx.sizes
        tokens, width = x.shape
        dtype = x.dtype
        grad_u = torch.zeros(tokens, width // n, dtype=dtype) if grad_u is None else grad_u.contiguous()
        grad_a = torch.zeros_like(a) if grad_a is None else grad_a.contiguous().clone()  # row 0 is added to
        grad_post = (torch.zeros(tokens, a.shape[1] - 1, 1, dtype=dtype) if grad_post is None
                     else grad_post.contiguous())
        grad_x = ctx.link.grad_x if ctx.link is not None else None
        if grad_x is None:
            grad_x = torch.zeros_like(x)
        else:
            ctx.link.grad_x = None
        grad_proj, grad_scale = torch.empty_like(proj), torch.empty(tokens, dtype=dtype)
        sums = np.zeros(bias.shape[0]), np.zeros(bias.shape[0]), np.zeros(n if head is not None else 0)
        _read_backward(*_arrays(x, proj, inv_rms, gates, bias), _numpy(head, _zero(dtype).dtype), n, iters, bound,
                       _zero(dtype), *_arrays(a, grad_u, grad_a, grad_post, grad_proj), *sums[:2],
                       grad_scale.numpy(), sums[2], grad_x.numpy())
        grad_x.addmm_(grad_proj, phi)
        grad_phi = grad_proj.t() @ x if ctx.needs_input_grad[1] else None
        grad_bias, grad_gates, grad_head = (torch.from_numpy(s).to(dtype) for s in sums)
        return (grad_x, grad_phi, grad_gates, grad_bias, grad_head if ctx.needs_input_grad[4] else None,
                None, None, None, None, None)


class StreamWrite(torch.autograd.Function):
    """See ``stream_write``."""

    @staticmethod
    def forward(ctx, x, a, post, y, link):
        out = torch.empty(x.shape[0], (a.shape[1] - 1) * y.shape[1], dtype=x.dtype)
        _write_forward(*_arrays(x, a, post, y, out))
        ctx.save_for_backward(x, a, post, y)
        ctx.link = link
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, a, post, y = ctx.saved_tensors
        grad_x, grad_a, grad_post, grad_y = (torch.empty_like(t) for t in (x, a, post, y))
        _write_backward(*_arrays(x, a, post, y, grad.contiguous()), _zero(x.dtype),
                        *_arrays(grad_x, grad_a, grad_post, grad_y))
        if not ctx.needs_input_grad[0]:
            grad_x = None
        elif ctx.link is not None:
            ctx.link.grad_x, grad_x = grad_x, None
        return grad_x, grad_a, grad_post, grad_y, None


def stream_read(x, phi, gates, bias, head, n: int, iters: int, bound: float, eps: float,
                link: GradientLink | None = None):
    """(u [N, c], A [N, 1 + r, n], write-out [N, r, 1], h_pre [N, n], h_post [N, n], h_res [N, n, n]) of a dynamic
    layer inside a stack, from its streams x [N, n c]: RMS norm, projection, ``gates`` * projection + ``bias``
    ([m] each), the coefficients, and u = H_pre x. ``head`` [n]: a stack's last layer's read-out weights, or None.
    All tensors on the CPU in one dtype, float32 or float64; the last three carry no gradient. ``link``: the one
    given to the ``stream_write`` of the same x."""
    return StreamRead.apply(x, phi, gates, bias, head, n, iters, bound, eps, link)


def stream_write(x, a, post, y, link: GradientLink | None = None):
    """The next streams [N, r c]: A[:, 1:] x + post y per token, for x [N, n c], A [N, 1 + r, n] (row 0 unused),
    post [N, r, 1] and the block's output y [N, c], on the CPU in one dtype (float32 or float64)."""
    return StreamWrite.apply(x, a, post, y, link)
