"""Sinkhorn-Knopp on 3,072 batched 4 x 4 and 8 x 8 matrices, 20 iterations, forward + backward.

Baselines, timed in the same process on the same tensors: lucidrains' hyper-connections
``log_domain_sinkhorn_knopps`` (against our log domain, the default) and ``sinkhorn_knopps`` (against our plain
domain). Target: <= 0.8x their time at equal or smaller doubly stochastic error, the error being the
worst |column sum - 1| over the batch (rows are exact in both); "equal" allows 1e-6 of float32 rounding.
Also reported: matrices per second, and our error against the iteration count.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from bench.harness import Row, Timing
from core.mhc.sinkhorn import doubly_stochastic_error, sinkhorn_knopp

BATCH, ITERS = 3072, 20


def interleaved(fns: list[Callable[[], object]], repeats: int, warmup: int = 2) -> list[Timing]:
    """Time several functions in turn, repeat after repeat, so that load from elsewhere on a shared machine
    falls on all of them alike; medians with their range, as bench.harness.measure gives."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, samples):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return [Timing.of(s) for s in samples]


def forward_backward(fn: Callable[[torch.Tensor], torch.Tensor], logits: torch.Tensor, upstream: torch.Tensor):
    def step():
        logits.grad = None
        fn(logits).backward(upstream)

    return step


def run(quick: bool) -> list[Row]:
    from hyper_connections.manifold_constrained_hyper_connections import log_domain_sinkhorn_knopps, sinkhorn_knopps

    repeats = 5 if quick else 15
    rows = []
    for n in (4, 8):
        gen = torch.Generator().manual_seed(n)
        logits = torch.randn(BATCH, n, n, generator=gen).requires_grad_()
        upstream = torch.randn(BATCH, n, n, generator=gen)
        pairs = [
            ("log domain", lambda x: sinkhorn_knopp(x, ITERS), "log_domain_sinkhorn_knopps",
             lambda x: log_domain_sinkhorn_knopps(x, ITERS)),
            ("plain domain", lambda x: sinkhorn_knopp(x, ITERS, log_domain=False), "sinkhorn_knopps",
             lambda x: sinkhorn_knopps(x, ITERS)),
        ]
        for label, ours, their_name, theirs in pairs:
            with torch.no_grad():
                err_ours = doubly_stochastic_error(ours(logits))[1]
                err_theirs = doubly_stochastic_error(theirs(logits))[1]
            t_ours, t_theirs = interleaved([forward_backward(ours, logits, upstream),
                                            forward_backward(theirs, logits, upstream)], repeats)
            ratio = t_ours.median_s / t_theirs.median_s
            extra = {"col_error": f"{err_ours:.2e}", "their_col_error": f"{err_theirs:.2e}",
                     "matrices_per_s": f"{BATCH / t_ours.median_s:,.0f}"}
            if n == 4 and label == "log domain":
                with torch.no_grad():
                    by_iters = {k: doubly_stochastic_error(sinkhorn_knopp(logits, k))[1] for k in (5, 10, 20, 50)}
                extra["col_error_by_iters"] = ", ".join(f"{k}:{v:.1e}" for k, v in by_iters.items())
            rows.append(Row(
                group="sinkhorn", name=f"{BATCH} x {n}x{n}, {ITERS} it, fwd+bwd, {label}", timing=t_ours,
                baseline_name=f"hyper-connections {their_name}", baseline=t_theirs, target="<= 0.8x",
                met=ratio <= 0.8 and err_ours <= err_theirs + 1e-6, extra=extra,
            ))
    return rows


if __name__ == "__main__":
    for row in run(quick=False):
        print(f"{row.name}: {row.timing.median_s * 1e3:.2f} ms vs {row.baseline.median_s * 1e3:.2f} ms "
              f"= {row.ratio:.2f}x ({'met' if row.met else 'MISSED'}) {row.extra}")
