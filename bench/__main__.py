"""``python -m bench [--quick] [--only NAME ...] [--json PATH]``: run every benchmark, print one table.

``python -m bench --markdown RESULTS.json`` prints an earlier run as the README's Markdown table.

The table gives median (min-max) over the repeats after warm-up, the baseline measured in the same run,
their ratio and the target. JSON with the machine description goes to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import platform
import sys
import time
import traceback
from pathlib import Path

import bench

DEFAULT_PEERS_PYTHON = os.environ.get("ARC_STATE_PYTHON", ".venv-peers/bin/python")


def machine() -> dict:
    import torch

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def fmt_time(t) -> str:
    if t is None:
        return "-"
    scale, unit = (1e3, "ms") if t.median_s < 1 else (1.0, "s")
    return f"{t.median_s * scale:.3g} ({t.min_s * scale:.3g}-{t.max_s * scale:.3g}) {unit}"


# The extras worth a column in the README table; the JSON keeps them all.
README_EXTRAS = ("col_error", "their_col_error", "max_abs_diff_vs_deepseek", "hyper_connections_vs_plain",
                 "cells_per_s", "cells_per_s_baseline", "train_cells_per_s", "peak_mb", "peak_mb_st_lora", "compile_s",
                 "import_s", "extra_ms_blocks_slower", "extra_ms_mhc_own_work", "extra_ms_optimiser", "copies_alone_ms",
                 "beyond_the_copies_ms")


def _fmt_json_time(t: dict | None) -> str:
    if not t:
        return "-"
    scale, unit = (1e3, "ms") if t["median_s"] < 1 else (1.0, "s")
    return f"{t['median_s'] * scale:.3g} ({t['min_s'] * scale:.3g}–{t['max_s'] * scale:.3g}) {unit}"


def markdown(result: dict) -> str:
    """A results JSON as the README's Markdown table, with the machine it came from."""
    lines = ["| benchmark | median (min–max) | baseline, same run | ratio | target | met | notes |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in result["rows"]:
        ratio = f"{row['ratio']:.2f}×" if row.get("ratio") is not None else "-"
        met = {True: "yes", False: "**no**", None: "-"}[row.get("met")]
        baseline = f"{row['baseline_name']}: {_fmt_json_time(row['baseline'])}" if row.get("baseline") else "-"
        notes = ", ".join(f"{k} {v}" for k, v in row.get("extra", {}).items() if k in README_EXTRAS)
        lines.append(f"| {row['group']}: {row['name']} | {_fmt_json_time(row['timing'])} | {baseline} | {ratio} | "
                     f"{row.get('target') or '-'} | {met} | {notes} |")
    m = result["machine"]
    lines.append("")
    lines.append(f"Machine: {m['cpus']} CPUs ({m['processor']}), {m['platform']}, Python {m['python']}, torch "
                 f"{m['torch']} ({m['torch_threads']} threads), GPU: {m['cuda'] or 'none'}; whole suite "
                 f"{result['seconds']:.0f} s.")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller sizes (smoke run)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these modules, e.g. sinkhorn mhc")
    parser.add_argument("--json", type=Path, default=None, help="where to write the JSON results")
    parser.add_argument("--markdown", type=Path, default=None, metavar="RESULTS_JSON",
                        help="print an earlier run's results as the README's Markdown table, run nothing")
    parser.add_argument("--peers", nargs="?", const=DEFAULT_PEERS_PYTHON, default=None, metavar="PYTHON",
                        help="also time arc-state's own step, in a Python that has arc-state 0.11.1 "
                             f"(default $ARC_STATE_PYTHON or {DEFAULT_PEERS_PYTHON}; ./dev bench --peers builds it)")
    parser.add_argument("--gpu", action="store_true",
                        help="the GPU rows (bf16 autocast on one CUDA device) instead of the CPU suite")
    args = parser.parse_args(argv)
    if args.peers:
        if not Path(args.peers).exists():
            print(f"error: --peers: {args.peers} does not exist; give a Python that has arc-state 0.11.1 "
                  "(e.g. python -m venv v && v/bin/pip install arc-state==0.11.1)", file=sys.stderr)
            return 2
        os.environ["ARC_STATE_PYTHON"] = args.peers
    if args.gpu:
        from bench.gpu_rows import gpu_main

        return gpu_main(args.quick, args.json)
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return 0

    names = sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if m.name.startswith("bench_"))
    if args.only:
        names = [n for n in names if n.removeprefix("bench_") in args.only]
    rows, failed, seconds, started = [], {}, {}, time.time()
    for name in names:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        t0 = time.time()
        try:  # one broken benchmark must not cost the others' results
            rows.extend(importlib.import_module(f"bench.{name}").run(quick=args.quick))
        except Exception:
            failed[name] = traceback.format_exc()
            print(f"[bench] {name} FAILED:\n{failed[name]}", file=sys.stderr, flush=True)
        seconds[name] = round(time.time() - t0, 1)

    return report(rows, failed, seconds, started, args.json)


def report(rows, failed: dict, seconds: dict, started: float, json_path) -> int:
    """Print the table, write the JSON (with the machine); 1 when a benchmark failed."""
    header = f"{'benchmark':<58} {'median (min-max)':<28} {'baseline':<28} {'ratio':>6}  target  met"
    print(header)
    print("-" * len(header))
    for row in rows:
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else "-"
        met = {True: "yes", False: "NO", None: "-"}[row.met]
        extra = "  " + ", ".join(f"{k}={v}" for k, v in row.extra.items()) if row.extra else ""
        print(f"{row.group + ': ' + row.name:<58} {fmt_time(row.timing):<28} {fmt_time(row.baseline):<28} "
              f"{ratio:>6}  {row.target or '-'}  {met}{extra}")
    result = {"machine": machine(), "seconds": round(time.time() - started, 1), "module_seconds": seconds,
              "failed": failed, "rows": [r.to_json() for r in rows]}
    out = json_path or Path("bench/results") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nmachine: {result['machine']}\nseconds per module: {seconds}\nwrote {out} in {result['seconds']} s")
    if failed:
        print(f"benchmarks that failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
