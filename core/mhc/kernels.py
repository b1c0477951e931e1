"""The two wide operations of an mHC layer, with hand-written backward passes.

Everything else in a layer works on a few numbers per token; these two read the n streams (n C per token), so
on a CPU their passes over memory are what a layer costs beyond its block. Autograd would spend extra passes on
them (a separate gradient for the RMS statistic, a concatenation for split outputs, additions of partial
gradients); the backward passes below write each gradient once, and the forward values are unchanged.

Shapes: N tokens, D = n C (or C for a stack's first layer, whose streams are copies), m mapping logits,
n streams, c hidden size, r = rows written out.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


class RMSProjection(torch.autograd.Function):
    """(x phi^T) / rms(x) for x [N, D], phi [m, D]: the paper's RMSNorm(vec(x)) phi (§4.1, eq. 7), unweighted.

    The norm is a per-token scalar, so it scales the m-wide product instead of the D-wide input.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, phi: torch.Tensor, eps: float) -> torch.Tensor:
        width = x.shape[-1]
        inv_rms = torch.rsqrt(torch.linalg.vector_norm(x, dim=-1).square_().div_(width).add_(eps))
        projected = x @ phi.t()
        ctx.save_for_backward(x, phi, projected, inv_rms)
        return projected * inv_rms.unsqueeze(-1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, phi, projected, inv_rms = ctx.saved_tensors
        grad = grad.contiguous()  # it arrives transposed from the batch-last coefficients
        grad_projected = grad * inv_rms.unsqueeze(-1)
        grad_x = grad_phi = None
        if ctx.needs_input_grad[1]:
            grad_phi = grad_projected.t() @ x
        if ctx.needs_input_grad[0]:
            # d inv_rms / dx = -inv_rms^3 x / D
            grad_inv = (grad * projected).sum(-1)
            coef = grad_inv.mul_(inv_rms.pow(3)).div_(-x.shape[-1])
            grad_x = (grad_projected @ phi).addcmul_(x, coef.unsqueeze(-1))
        return grad_x, grad_phi, None


def stream_mix_backward(a: torch.Tensor, x: torch.Tensor, grad_u: torch.Tensor | None,
                        grad_mixed: torch.Tensor | None, need_a: bool = True, need_x: bool = True):
    """(grad_a, grad_x) of y = A x per token (A [N, 1 + r, n], x [N, n, c]) from the gradients of row 0 and rows
    1..r (None: zero), each None when not needed. The two output gradients stay apart: joining them into one
    tensor for one product would copy n c per token."""
    if grad_u is None:
        grad_u = torch.zeros_like(x[:, :1])
    if grad_mixed is None:
        grad_mixed = torch.zeros(x.shape[0], a.shape[1] - 1, x.shape[2], dtype=x.dtype, device=x.device)
    grad_a = grad_x = None
    if need_a:
        x_t = x.transpose(1, 2)
        grad_a = torch.cat([torch.bmm(grad_u, x_t), torch.bmm(grad_mixed, x_t)], 1)
    if need_x:
        grad_x = torch.bmm(a[:, 1:].transpose(1, 2), grad_mixed).baddbmm_(a[:, :1].transpose(1, 2), grad_u)
    return grad_a, grad_x


class StreamMix(torch.autograd.Function):
    """y = A x per token for A [N, 1 + r, n], x [N, n, c]; returns (row 0, rows 1..r): block input and mixed streams.

    One batched product reads the streams once for both; the backward keeps the two output gradients apart
    instead of concatenating them.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, x: torch.Tensor):
        y = torch.bmm(a, x)
        ctx.save_for_backward(a, x)
        # the block input is handed on contiguous: a strided one costs more inside the block than this copy
        return y[:, :1].contiguous(), y[:, 1:]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_u: torch.Tensor | None, grad_mixed: torch.Tensor | None):
        a, x = ctx.saved_tensors
        return stream_mix_backward(a, x, grad_u, grad_mixed, *ctx.needs_input_grad)
