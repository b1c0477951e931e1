"""Sinkhorn-Knopp projection of square matrices onto the doubly stochastic matrices (Birkhoff polytope).

Shapes: ``[..., n, n]``, any leading batch dimensions.

Given logits L, Sinkhorn-Knopp finds diagonal scalings D1, D2 with D1 exp(L) D2 doubly stochastic
(Sinkhorn & Knopp 1967) by alternately normalising columns and rows. mHC (arXiv 2512.24880, §4.2) uses
t_max = 20 iterations. Rows are normalised last, so row sums are exact up to float rounding: H_res acts on
the streams as ``x_next = H_res @ x``, and exact rows mean a constant signal keeps its gain exactly.

Two numerically different forms of the same iteration:
- log domain (default): L <- L - logsumexp over columns, then over rows. Finite for any finite logits
  (tested at +-1e4), since it never exponentiates before normalising.
- plain domain: P = exp(L - max L), then P <- P / column sums, P <- P / row sums. Cheaper (no exp/log per
  iteration) and exact for bounded logits; underflows to 0/0 for logit spreads beyond ~80 in float32.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def sinkhorn_knopp(logits: torch.Tensor, n_iters: int = 20, log_domain: bool = True) -> torch.Tensor:
    """Doubly stochastic matrix from ``logits`` [..., n, n] after ``n_iters`` column-then-row passes.

    Differentiable (plain autograd through the unrolled iterations). The result has the dtype of the
    logits; mHC passes float32 logits so that the mixing coefficients stay in float32 under autocast.
    """
    if logits.ndim < 2 or logits.shape[-1] != logits.shape[-2]:
        raise ValueError(f"sinkhorn_knopp needs square matrices [..., n, n]; got shape {tuple(logits.shape)}")
    if n_iters < 1:
        raise ValueError(f"n_iters must be >= 1; got {n_iters}")
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
