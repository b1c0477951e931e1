"""``python -m bench --gpu``: the training rows on one CUDA device under bf16 autocast (issue 15, target 4).

Rows: the demo-sized LoRA step with dynamic and with static mHC against the same step without (target <= 1.10x;
the paper reports 1.067x with fused kernels), the ST step at hidden 128 and 512, the demo step plain and with
mHC compiled by training.compile's in-place torch.compile against the same step eager (with the compile's
seconds), and the ST-Tahoe-sized step (hidden 1488, 6 layers, 12 heads, FFN 5952, 2000-d, sets of 256) with
LoRA and with LoRA + mHC, as cells/s and peak GPU memory. The steps are bench/scale_worker.make_step, which the
CPU suite and tests/unit/test_bench_rows.py also run (on the CPU, bf16 autocast and the compile included).
Steps are timed alternately with ``torch.cuda.synchronize`` before each clock read. Budget: 5 minutes on one
GPU (not yet run on one: no GPU has been available).
"""

from __future__ import annotations

import sys
import time

from bench.harness import Row, interleaved

DEMO = dict(hidden=128, layers=4, heads=4, dim=50, set_len=32, sets=8)
TAHOE = dict(hidden=1488, layers=6, heads=12, dim=2000, set_len=256, sets=8)
QUICK_TAHOE = dict(TAHOE, hidden=96, layers=2, heads=4, dim=200, set_len=32, sets=2)


def _mhc_rows(demo: dict, repeats: int, device: str, sync) -> list[Row]:
    from bench.scale_worker import make_step

    steps = {"plain": make_step(**demo, mhc=False, device=device, autocast=True),
             "dynamic": make_step(**demo, mhc=True, device=device, autocast=True),
             "static": make_step(**demo, mhc=True, device=device, autocast=True, dynamic=False)}
    cells = steps["plain"][1]
    t = interleaved({name: step for name, (step, _, _) in steps.items()}, repeats, sync=sync)
    rows = []
    for name, label in (("dynamic", "dynamic mHC"), ("static", "static mHC (mhc.dynamic=false)")):
        ratio = t[name].median_s / t["plain"].median_s
        rows.append(Row("gpu", f"demo LoRA step with {label}, {demo['sets']}x{demo['set_len']} cells, bf16 autocast",
                        t[name], "same step without mHC", t["plain"], target="<= 1.10x", met=ratio <= 1.10,
                        extra={"cells_per_s": round(cells / t[name].median_s)}))
    return rows


def _compiled_rows(demo: dict, repeats: int, device: str, sync, variants=(False, True)) -> list[Row]:
    """training.compile's step (the model compiled in place, as a run does) against the same step eager; one row
    per entry of ``variants`` (with mHC or not)."""
    from bench.scale_worker import make_step
    from core.training.compile import compile_model, missing_compiler

    reason = missing_compiler(device)
    rows = []
    for with_mhc in variants:
        label = (f"demo LoRA{' + mHC' if with_mhc else ''} step compiled with training.compile, "
                 f"{demo['sets']}x{demo['set_len']} cells, bf16 autocast")
        if reason:
            rows.append(Row("gpu", label, None, extra={"skipped": reason}))
            continue
        eager, cells, _ = make_step(**demo, mhc=with_mhc, device=device, autocast=True)
        compiled, _, model = make_step(**demo, mhc=with_mhc, device=device, autocast=True)
        compile_model(model, device)
        sync()
        start = time.perf_counter()
        compiled()  # the first call compiles
        sync()
        compile_s = time.perf_counter() - start
        t = interleaved({"compiled": compiled, "eager": eager}, repeats, sync=sync)
        rows.append(Row("gpu", label, t["compiled"], "the same step eager", t["eager"],
                        extra={"compile_s": round(compile_s, 1), "cells_per_s": round(cells / t["compiled"].median_s)}))
    return rows


def gpu_rows(quick: bool, device: str = "cuda", compile: bool = True) -> list[Row]:
    """Every --gpu row; ``device="cpu"`` runs the same code on the CPU (the tests), ``compile=False`` leaves out
    the compiled rows (their compile takes tens of seconds on a CPU)."""
    import torch

    from bench.scale_worker import make_step

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    repeats = 5 if quick else 20
    demo = dict(DEMO, sets=2) if quick else DEMO
    rows = _mhc_rows(demo, repeats, device, sync)
    for hidden in (128,) if quick else (128, 512):
        step, cells, _ = make_step(**dict(demo, hidden=hidden), mhc=False, device=device, autocast=True)
        timing = interleaved({"step": step}, repeats, sync=sync)["step"]
        rows.append(Row("gpu", f"ST LoRA step, hidden {hidden}, bf16 autocast", timing,
                        extra={"cells_per_s": round(cells / timing.median_s)}))
    if compile:
        rows += _compiled_rows(demo, repeats, device, sync)
    size = QUICK_TAHOE if quick else TAHOE
    for with_mhc in (False, True):
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        step, cells, _ = make_step(**size, mhc=with_mhc, device=device, autocast=True)
        timing = interleaved({"step": step}, repeats, sync=sync)["step"]
        peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
        rows.append(Row("gpu", f"ST-Tahoe-sized step, LoRA{' + mHC' if with_mhc else ''}, hidden {size['hidden']}, "
                               f"{size['sets']}x{size['set_len']} cells, bf16 autocast", timing,
                        extra={"cells_per_s": round(cells / timing.median_s), "peak_gpu_mb": peak and round(peak)}))
    return rows


def gpu_main(quick: bool, json_path) -> int:
    import torch

    if not torch.cuda.is_available():
        print("error: --gpu needs a CUDA device and torch sees none (torch.cuda.is_available() is False); run "
              "./dev bench without --gpu, or install the CUDA build of torch on a machine with a GPU", file=sys.stderr)
        return 2
    from bench.__main__ import report

    started = time.time()
    rows = gpu_rows(quick)
    return report(rows, {}, {"gpu_rows": round(time.time() - started, 1)}, started, json_path)
