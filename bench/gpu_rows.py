"""``python -m bench --gpu``: the training rows on one CUDA device under bf16 autocast (issue 15, target 4).

Rows: the demo-sized LoRA step with dynamic mHC against the same step without (target <= 1.10x; the paper
reports 1.067x with fused kernels), the ST step at hidden 128 and 512, and the ST-Tahoe-sized step (hidden
1488, 6 layers, 12 heads, FFN 5952, 2000-d, sets of 256) with LoRA and with LoRA + mHC, as cells/s and peak
GPU memory. The steps are bench/scale_worker.make_step, which the CPU suite and tests/unit/test_bench_rows.py
also run (on the CPU, bf16 autocast included). Steps are timed alternately with ``torch.cuda.synchronize``
before each clock read. About 2 minutes on one GPU.
"""

from __future__ import annotations

import sys
import time

from bench.harness import Row, interleaved

DEMO = dict(hidden=128, layers=4, heads=4, dim=50, set_len=32, sets=8)
TAHOE = dict(hidden=1488, layers=6, heads=12, dim=2000, set_len=256, sets=8)


def gpu_rows(quick: bool, device: str = "cuda") -> list[Row]:
    import torch

    from bench.scale_worker import make_step

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    repeats = 5 if quick else 20
    rows = []
    demo = dict(DEMO, sets=2) if quick else DEMO
    plain, cells, _ = make_step(**demo, mhc=False, device=device, autocast=True)
    mhc, _, _ = make_step(**demo, mhc=True, device=device, autocast=True)
    t = interleaved({"plain": plain, "mhc": mhc}, repeats, sync=sync)
    ratio = t["mhc"].median_s / t["plain"].median_s
    rows.append(Row("gpu", f"demo LoRA step with dynamic mHC, {demo['sets']}x{demo['set_len']} cells, bf16 autocast",
                    t["mhc"], "same step without mHC", t["plain"], target="<= 1.10x", met=ratio <= 1.10,
                    extra={"cells_per_s": round(cells / t["mhc"].median_s)}))
    for hidden in (128,) if quick else (128, 512):
        step, cells, _ = make_step(**dict(demo, hidden=hidden), mhc=False, device=device, autocast=True)
        timing = interleaved({"step": step}, repeats, sync=sync)["step"]
        rows.append(Row("gpu", f"ST LoRA step, hidden {hidden}, bf16 autocast", timing,
                        extra={"cells_per_s": round(cells / timing.median_s)}))
    size = dict(TAHOE, hidden=96, layers=2, heads=4, dim=200, set_len=32, sets=2) if quick else TAHOE
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
