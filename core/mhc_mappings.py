"""The three mHC mappings of one layer: read-in H_pre, write-out H_post and residual mixing H_res.

mHC (Xie et al., arXiv 2512.24880, §4.1, eqs. 5-8), for the n streams x of one token (n x C):
    x~       = RMSNorm(vec(x))                                   1 x nC, unweighted as in DeepSeek V4
    H~_pre   = alpha_pre  * (x~ phi_pre)       + b_pre           1 x n
    H~_post  = alpha_post * (x~ phi_post)      + b_post          1 x n
    H~_res   = alpha_res  * mat(x~ phi_res)    + b_res           n x n
    H_pre    = sigmoid(H~_pre),  H_post = 2 sigmoid(H~_post),  H_res = Sinkhorn-Knopp(H~_res), t_max = 20
The gates alpha start at 0.01 (§4.3) and phi at 0, so every mapping starts at its static bias and the dynamic,
input-dependent part grows only as training asks for it. One fused linear map computes all 2n + n^2 dynamic
terms at once: on a CPU the time goes into launching many tiny operations, not into arithmetic.

mHC-lite (arXiv 2601.05732) is the ``projection="permutations"`` alternative: H_res is a convex combination
of the n! permutation matrices, softmax-weighted, so it is doubly stochastic to float precision by
construction, with no iteration.

Shapes: b batch, t tokens, n streams, c hidden size, m number of H_res logits (n^2 or n!).
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from core.sinkhorn import sinkhorn_knopp

# Why these initial values (see README "mHC"):
GATE_INIT = 0.01  # alpha, paper §4.3
# H_res starts at Sinkhorn(tau I), diagonal e^tau / (e^tau + n - 1): 0.87 at n = 4. Near identity so each
# stream first keeps its own content, yet far from saturation: the mean |gradient| through Sinkhorn at tau = 3
# is about 0.05, against 4.5e-4 at tau = 8 (which would freeze H_res in place).
RES_DIAG_INIT = 3.0
# Hard bound on H_res logits. Sinkhorn in 20 iterations leaves column errors of 5e-2 at logit scale 3 and
# fails to converge at all beyond 10; a bound of 6 keeps every logit gap below e^12.
RES_LOGIT_BOUND = 6.0
# H_pre starts as a soft one-hot on stream (layer index mod n), 0.85 on it and 0.15 shared by the others:
# its entries sum to 1 (function preservation) yet differ across streams, so the streams can diverge.
PRE_MAIN_WEIGHT = 0.85
RMS_EPS = 1e-6


def permutation_matrices(n: int) -> torch.Tensor:
    """All n! permutation matrices [n!, n, n], the identity first."""
    perms = list(itertools.permutations(range(n)))
    eye = torch.eye(n)
    return torch.stack([eye[list(p)] for p in perms])


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class mHCMappings(nn.Module):
    """Computes (H_pre, H_post, H_res) for one wrapped layer, from the streams when ``dynamic``."""

    def __init__(self, hidden_dim: int, n_streams: int = 4, sinkhorn_iters: int = 20, dynamic: bool = True,
                 projection: str = "sinkhorn", layer_index: int = 0):
        super().__init__()
        if n_streams < 2:
            raise ValueError(f"mHC needs n_streams >= 2 (1 stream is a plain residual); got {n_streams}")
        if sinkhorn_iters < 1:
            raise ValueError(f"sinkhorn_iters must be >= 1; got {sinkhorn_iters}")
        if projection not in ("sinkhorn", "permutations"):
            raise ValueError(f"projection must be 'sinkhorn' or 'permutations'; got {projection!r}")
        if projection == "permutations" and n_streams > 6:
            raise ValueError(f"projection='permutations' enumerates n! matrices; n_streams={n_streams} is too many")
        n = n_streams
        self.n_streams, self.sinkhorn_iters, self.dynamic, self.projection = n, sinkhorn_iters, dynamic, projection
        self.hidden_dim = hidden_dim

        main = layer_index % n
        pre_off = (1.0 - PRE_MAIN_WEIGHT) / (n - 1)
        b_pre = torch.full((n,), _logit(pre_off))
        b_pre[main] = _logit(PRE_MAIN_WEIGHT)
        self.b_pre = nn.Parameter(b_pre)
        self.b_post = nn.Parameter(torch.zeros(n))  # 2 sigmoid(0) = 1: every stream receives the block's output
        if projection == "sinkhorn":
            self.b_res = nn.Parameter(torch.eye(n) * RES_DIAG_INIT)
            n_res = n * n
        else:
            self.register_buffer("permutations", permutation_matrices(n), persistent=False)
            n_res = self.permutations.shape[0]
            b_res = torch.zeros(n_res)
            # Start at the same diagonal as Sinkhorn(tau I). With weight w on the identity and the rest spread
            # evenly, a diagonal entry is w + (1 - w) q, q = ((n-1)! - 1) / (n! - 1) being the share of the
            # other permutations that fix a given stream; solve for w, then for the identity's logit.
            diag = math.exp(RES_DIAG_INIT) / (math.exp(RES_DIAG_INIT) + n - 1)
            others = n_res - 1
            q = (math.factorial(n - 1) - 1) / others
            w_id = (diag - q) / (1 - q)
            b_res[0] = math.log(w_id * others / (1 - w_id))
            self.b_res = nn.Parameter(b_res)
        self.n_res = n_res
        if dynamic:
            self.phi = nn.Parameter(torch.zeros(2 * n + n_res, n * hidden_dim))
            self.alpha = nn.Parameter(torch.full((3,), GATE_INIT))  # pre, post, res
        self._last: dict[str, torch.Tensor] | None = None

    def extra_repr(self) -> str:
        return (f"n_streams={self.n_streams}, projection={self.projection}, dynamic={self.dynamic}, "
                f"sinkhorn_iters={self.sinkhorn_iters}")

    def _res_from_logits(self, res_logits: torch.Tensor) -> torch.Tensor:
        if self.projection == "sinkhorn":
            # plain domain is exact and cheaper here because the logits are bounded
            return sinkhorn_knopp(res_logits.clamp(-RES_LOGIT_BOUND, RES_LOGIT_BOUND), self.sinkhorn_iters,
                                  log_domain=False)
        weights = torch.softmax(res_logits, dim=-1)  # [..., n!]
        return torch.einsum("...k,kij->...ij", weights, self.permutations.to(weights.dtype))

    def forward(self, streams: torch.Tensor):
        """streams [b, t, n, c] -> h_pre [b, t, n] (or [n]), h_post likewise, h_res [b, t, n, n] (or [n, n]).

        Coefficients are float32 whatever the streams' dtype (paper §4.4: the mappings stay in full precision).
        """
        n = self.n_streams
        if not self.dynamic:
            pre, post, res = self.b_pre.float(), self.b_post.float(), self.b_res.float()
        else:
            flat = streams.flatten(-2).float()  # [b, t, n c]
            flat = flat * torch.rsqrt(flat.square().mean(-1, keepdim=True) + RMS_EPS)
            dyn = flat @ self.phi.float().t()  # [b, t, 2n + m]
            d_pre, d_post, d_res = dyn.split([n, n, self.n_res], dim=-1)
            a = self.alpha.float()
            pre = a[0] * d_pre + self.b_pre.float()
            post = a[1] * d_post + self.b_post.float()
            res = a[2] * d_res + self.b_res.float().flatten()
            if self.projection == "sinkhorn":
                res = res.unflatten(-1, (n, n))
        h_pre, h_post, h_res = torch.sigmoid(pre), 2.0 * torch.sigmoid(post), self._res_from_logits(res)
        self._remember(h_pre, h_post, h_res)
        return h_pre, h_post, h_res

    def _remember(self, h_pre, h_post, h_res):
        # Detached batch means, kept on device: reading them costs nothing until someone asks.
        with torch.no_grad():
            lead = tuple(range(h_pre.ndim - 1))
            self._last = {
                "h_pre": h_pre.mean(lead) if lead else h_pre.detach(),
                "h_post": h_post.mean(lead) if lead else h_post.detach(),
                "h_res": h_res.mean(lead) if lead else h_res.detach(),
            }

    @torch.no_grad()
    def current(self) -> dict[str, torch.Tensor]:
        """Mean mappings over the last batch seen; the static (bias-only) mappings before any batch."""
        if self._last is None:
            n = self.n_streams
            pre, post = torch.sigmoid(self.b_pre.float()), 2 * torch.sigmoid(self.b_post.float())
            res_logits = self.b_res.float() if self.projection == "permutations" else self.b_res.float().view(n, n)
            return {"h_pre": pre, "h_post": post, "h_res": self._res_from_logits(res_logits)}
        return dict(self._last)
