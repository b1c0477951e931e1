"""The three mHC mappings of one layer: read-in H_pre, write-out H_post and residual mixing H_res.

mHC (Xie et al., arXiv 2512.24880, §4.1, eqs. 7-8), for the n streams x of one token (n x C):
    x~       = RMSNorm(vec(x))                                   1 x nC, unweighted as in DeepSeek V4
    H~_pre   = alpha_pre  * (x~ phi_pre)       + b_pre           1 x n
    H~_post  = alpha_post * (x~ phi_post)      + b_post          1 x n
    H~_res   = alpha_res  * mat(x~ phi_res)    + b_res           n x n
    H_pre    = sigmoid(H~_pre),  H_post = 2 sigmoid(H~_post),  H_res = Sinkhorn-Knopp(H~_res), t_max = 20
The gates alpha start at 0.01 (§4.3) and phi at 0, so every mapping starts at its static bias and the dynamic,
input-dependent part grows only as training asks for it. Coefficients are float32 whatever the streams' dtype
(§4.4), also under autocast.

How it is computed, for speed on CPUs where launching many tiny operations is what costs: one matrix product
gives all 2n + n^2 dynamic terms at once; RMSNorm is applied to that product's rows (a per-token scalar) instead
of to the nC-wide streams; and the coefficients are laid out batch-last ([n, tokens], [n, n, tokens]) so every
elementwise step and every Sinkhorn sum runs along the long token axis. For the first layer of a stack, whose
streams are E_i h (E the fixed expansion 1 + p, one hidden state h), x~ phi is RMSNorm(h) times phi's n column
blocks weighted by E_i / rms(E): n times fewer multiplications, same numbers.

mHC-lite (arXiv 2601.05732) is the ``projection="permutations"`` alternative: H_res is a convex combination
of the n! permutation matrices, softmax-weighted, so it is doubly stochastic to float precision by
construction, with no iteration.

Shapes: N tokens (batch x sequence), n streams, C hidden size, m = 2n + (n^2 or n!) dynamic terms.
"""

from __future__ import annotations

import contextlib
import itertools
import math

import torch
from torch import nn

from core.mhc.kernels import RMSProjection
from core.mhc.sinkhorn import sinkhorn_knopp_batch_last

GATE_INIT = 0.01  # alpha, paper §4.3
# H_res starts at Sinkhorn(tau I), diagonal e^tau / (e^tau + n - 1): 0.87 at n = 4. Near identity, so each
# stream first keeps its own content, yet far from saturation: the mean |gradient| through Sinkhorn at tau = 3
# is about 0.05, against 4.5e-4 at tau = 8, which would freeze H_res in place (tests/unit/test_mhc_mappings.py).
RES_DIAG_INIT = 3.0
# Hard bound on the H_res logits, applied after removing each column's mean (Sinkhorn's first, column step
# removes any column shift exactly, so the centring changes nothing else and a drift of all logits never hits
# the bound). Sinkhorn does not converge in 20 iterations at logit scale >= 10; within +-3 the worst column
# error we found over 3e5 adversarial 4 x 4 matrices is 2.5e-2, the same worst matrix repeated over 60 layers has
# a column gain of 1.59 (the paper reports a maximum near 1.6), and random ones stay within 1.01 of 1. Rows are
# exact, so the forward (row) gain is 1. The bound caps the diagonal of an identity-like H_res at
# e^4 / (e^4 + 3) = 0.948 for n = 4; mHC-lite (permutations) reaches exact permutations if a task needs them.
RES_LOGIT_BOUND = 3.0
# The initial pattern (why: core/mhc/layer.py's docstring, "Function preservation"). H_post = 1 + p in every
# layer, and a stack's first layer writes its input into the streams as (1 + p) h, with the zero-sum pattern
# p = a (1, -1/(n-1), ..., -1/(n-1)): the streams start different, their deviations from the mean along p.
POST_PATTERN = 0.5  # a; H_post = (1.5, 0.83, 0.83, 0.83) at n = 4, inside 2 sigmoid's range (0, 2)
# H_pre (and a stack's read-out weights) start at 1/n + TILT/n (e_i - e_j) with i, j two streams other than 0:
# they sum to 1 and are orthogonal to p, so at init each layer reads exactly the mean of the streams, the plain
# network's hidden state, yet non-uniformly, which is what gives H_res a gradient at step 1.
TILT = 0.6  # (0.25, 0.40, 0.10, 0.25) at n = 4
RMS_EPS = 1e-6


def stream_pattern(n: int) -> torch.Tensor:
    """p [n]: zero-sum, the same in every layer; H_post starts at 1 + p."""
    p = torch.full((n,), -POST_PATTERN / (n - 1))
    p[0] = POST_PATTERN
    return p


def tilted_weights(n: int, index: int) -> torch.Tensor:
    """[n] weights summing to 1, orthogonal to ``stream_pattern(n)``, tilted between two of streams 1..n-1 that
    rotate with ``index`` (the layer). Uniform at n = 2, where p takes the only zero-sum direction."""
    weights = torch.full((n,), 1.0 / n)
    if n >= 3:
        i, j = 1 + index % (n - 1), 1 + (index + 1) % (n - 1)
        weights[i] += TILT / n
        weights[j] -= TILT / n
    return weights


def without_autocast(device_type: str):
    """Autocast switched off for the coefficients. A device with no autocast (``meta``, on which the placement
    tests run the layer as a stand-in for CUDA) has nothing to switch off, and torch.autocast refuses it."""
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()  # entering an autocast context costs more than the few products it guards


def permutation_matrices(n: int) -> torch.Tensor:
    """All n! permutation matrices [n!, n, n], the identity first."""
    eye = torch.eye(n)
    return torch.stack([eye[list(p)] for p in itertools.permutations(range(n))])


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
        self.n_streams, self.hidden_dim = n, hidden_dim
        self.sinkhorn_iters, self.dynamic, self.projection = sinkhorn_iters, dynamic, projection

        self.b_pre = nn.Parameter(torch.logit(tilted_weights(n, layer_index)))
        self.b_post = nn.Parameter(torch.logit((1.0 + stream_pattern(n)) / 2.0))  # H_post = 2 sigmoid = 1 + p
        # how a stack's first layer spreads its input h over the streams: x = expansion h (a constant, not learned).
        # Saved with the weights, so a checkpoint of the earlier init (copies, no such key) is refused on load
        # instead of being run with a first layer it was not trained with.
        self.register_buffer("expansion", 1.0 + stream_pattern(n))
        if projection == "sinkhorn":
            self.b_res = nn.Parameter(torch.eye(n) * RES_DIAG_INIT)
            self.n_res = n * n
        else:
            self.register_buffer("permutations", permutation_matrices(n), persistent=False)
            self.n_res = self.permutations.shape[0]
            self.b_res = nn.Parameter(self._lite_init_logits(n, self.n_res))
        if dynamic:
            self.phi = nn.Parameter(torch.zeros(2 * n + self.n_res, n * hidden_dim))
            self.alpha = nn.Parameter(torch.full((3,), GATE_INIT))  # pre, post, res
            # which gate scales each of the m logits: one gather builds the m gates (slices, expands and a
            # concatenation would cost seven operations forward and more backward)
            gate_of = torch.tensor([0] * n + [1] * n + [2] * self.n_res)
            self.register_buffer("gate_index", gate_of, persistent=False)
        self._last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @staticmethod
    def _lite_init_logits(n: int, n_perms: int) -> torch.Tensor:
        # Start at the same diagonal as Sinkhorn(tau I). With weight w on the identity and the rest spread evenly,
        # a diagonal entry is w + (1 - w) q, q = ((n-1)! - 1) / (n! - 1) being the share of the other permutations
        # that fix a given stream; solve for w, then for the identity's logit.
        diag = math.exp(RES_DIAG_INIT) / (math.exp(RES_DIAG_INIT) + n - 1)
        others = n_perms - 1
        q = (math.factorial(n - 1) - 1) / others
        w_id = (diag - q) / (1 - q)
        logits = torch.zeros(n_perms)
        logits[0] = math.log(w_id * others / (1 - w_id))
        return logits

    def extra_repr(self) -> str:
        return (f"n_streams={self.n_streams}, projection={self.projection}, dynamic={self.dynamic}, "
                f"sinkhorn_iters={self.sinkhorn_iters}")

    def _res_batch_last(self, res_logits: torch.Tensor) -> torch.Tensor:
        """H_res [n, n, ...] from its logits ([n, n, ...] for Sinkhorn, [n!, ...] for permutations)."""
        n = self.n_streams
        if self.projection == "sinkhorn":
            flat = res_logits.reshape(n, n, -1)
            bounded = (flat - flat.mean(0, keepdim=True)).clamp_(-RES_LOGIT_BOUND, RES_LOGIT_BOUND)
            # plain domain: equal to the log domain and cheaper here, because the logits are bounded
            return sinkhorn_knopp_batch_last(bounded, self.sinkhorn_iters, log_domain=False).view(res_logits.shape)
        weights = torch.softmax(res_logits, dim=0)  # [n!, ...]
        perms = self.permutations.to(weights.dtype).flatten(1).t()  # [n*n, n!]
        return (perms @ weights.flatten(1)).view(n, n, *res_logits.shape[1:])

    def static_mappings(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The bias-only mappings h_pre [n], h_post [n], h_res [n, n] (float32)."""
        n = self.n_streams
        h_res = self._res_batch_last(self.b_res.float().unsqueeze(-1)).view(n, n)
        return torch.sigmoid(self.b_pre.float()), 2.0 * torch.sigmoid(self.b_post.float()), h_res

    def batch_last(self, tokens: torch.Tensor, repeated: bool = False, remember: bool = True):
        """Per-token mappings, batch-last: h_pre [n, N], h_post [n, N], h_res [n, n, N] (float32).

        ``tokens`` is [N, n C], the flattened streams, or [N, C] with ``repeated``: one hidden state h standing for
        the streams expansion_i h (the first layer of a stack). Static mappings come back as [n], [n], [n, n].
        """
        with without_autocast(tokens.device.type):
            mappings = self._dynamic(tokens.float(), repeated) if self.dynamic else self.static_mappings()
        if remember:  # references only: the means are taken when someone asks (current())
            self.remember(*mappings)
        return mappings

    def logits(self, tokens: torch.Tensor, repeated: bool = False) -> torch.Tensor:
        """The m logits per token, [N, m] float32 (pre, post, then H_res row by row), autocast off; static
        mappings: the biases as [1, m]. ``tokens`` as in :meth:`batch_last`."""
        with without_autocast(tokens.device.type):
            if not self.dynamic:
                return self.bias().unsqueeze(0)
            return self._dynamic_logits(tokens.float(), repeated)

    def bias(self) -> torch.Tensor:
        """[m] float32: the logits' biases, pre, post, then H_res row by row."""
        return torch.cat([self.b_pre.float(), self.b_post.float(), self.b_res.float().flatten()])

    def gates(self) -> torch.Tensor:
        """[m] float32: the gate alpha that scales each dynamic logit."""
        return self.alpha.float()[self.gate_index]

    def _dynamic_logits(self, x: torch.Tensor, repeated: bool) -> torch.Tensor:
        n, m = self.n_streams, self.phi.shape[0]
        phi = self.phi.float()
        if repeated:
            # streams x_i = E_i h (E the expansion): x~ phi^T = sum_i E_i phi_i h / (rms(h) rms(E)), phi_i the i-th
            # column block of phi, so one C-wide product with phi's blocks weighted by E_i / rms(E)
            weights = self.expansion.float() * torch.rsqrt(self.expansion.float().square().mean())
            phi = torch.einsum("mnc,n->mc", phi.view(m, n, -1), weights)
        projected = RMSProjection.apply(x, phi, RMS_EPS)  # [N, m]
        return torch.addcmul(self.bias(), projected, self.gates())

    def remember(self, h_pre: torch.Tensor, h_post: torch.Tensor, h_res: torch.Tensor) -> None:
        """Keep (references to) the last batch's mappings, batch-last as :meth:`batch_last` returns them."""
        self._last = (h_pre.detach(), h_post.detach(), h_res.detach())

    def _dynamic(self, x: torch.Tensor, repeated: bool):
        n = self.n_streams
        logits = self._dynamic_logits(x, repeated).t().contiguous()  # [m, N]
        pre_post = torch.sigmoid(logits[: 2 * n])
        h_pre, h_post = pre_post[:n], pre_post[n:] * 2.0
        res_logits = logits[2 * n:]
        if self.projection == "sinkhorn":
            res_logits = res_logits.view(n, n, -1)
        return h_pre, h_post, self._res_batch_last(res_logits)

    def forward(self, streams: torch.Tensor):
        """streams [..., n, C] -> h_pre [..., n], h_post [..., n], h_res [..., n, n] (float32; static: [n], [n, n])."""
        lead = streams.shape[:-2]
        h_pre, h_post, h_res = self.batch_last(streams.reshape(-1, streams.shape[-2] * streams.shape[-1]))
        if not self.dynamic:
            return h_pre, h_post, h_res
        return h_pre.t().reshape(*lead, -1), h_post.t().reshape(*lead, -1), h_res.permute(2, 0, 1).reshape(
            *lead, self.n_streams, self.n_streams)

    @torch.no_grad()
    def current(self) -> dict[str, torch.Tensor]:
        """Mean mappings over the tokens of the last batch seen; the static (bias-only) mappings before any batch
        and whenever the mappings are static."""
        if self._last is None or not self.dynamic:
            h_pre, h_post, h_res = self.static_mappings()
            return {"h_pre": h_pre, "h_post": h_post, "h_res": h_res}
        h_pre, h_post, h_res = self._last
        return {"h_pre": h_pre.mean(-1), "h_post": h_post.mean(-1), "h_res": h_res.mean(-1)}
