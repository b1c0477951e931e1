"""Real sizes (issue 15, target 3): a 100,000-cell x 2,000-gene burn/sham file and an ST-Tahoe-sized model.

Rows, each measured in a process of its own (bench/scale_worker.py) so that its peak memory (VmHWM) is its own:
- building the file with the demo generator (no UMAP): 100,008 cells (8,334 per cell type and condition) x
  2,000 genes, made in chunks of cells (core/data/demo.py), cached under the data cache dir (``$ST_DATA_CACHE``,
  default data/cache/, ignored by git; the name holds the size) and reused; the row gives the build time and
  peak of the run that built it (kept beside the file).
- the velocity pipeline (fast engine, stochastic) from its counts to v_z and confidence: <= 60 s, <= 8 GB peak,
  timed after its libraries are imported (torch, numba, scanpy, scvelo; their time is the row's import_s).
- one training epoch of the demo model (hidden 128, 4 layers, sets of 32, from scratch) over it, with its peak.
- one ST-LoRA training step of an ST-Tahoe-sized model (hidden 1488, 6 layers, 12 heads, FFN 5952, 2000-d
  input, 2 sets of 256 cells) on this device, without and with mHC (dynamic, n = 4): time and peak memory.
``--quick`` runs the same code on a 2,400 x 200 file (not cached) and a hidden-96 model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.harness import Row, Timing

WORKER = Path(__file__).with_name("scale_worker.py")
FULL = {"cells_per_group": 8334, "genes": 2000}  # the size: 12 x 8,334 = 100,008 cells
QUICK = {"cells_per_group": 200, "genes": 200}
TAHOE = {"hidden": 1488, "layers": 6, "heads": 12, "dim": 2000, "set_len": 256, "sets": 2}
TAHOE_QUICK = {"hidden": 96, "layers": 2, "heads": 4, "dim": 200, "set_len": 32, "sets": 2}


def _worker(*args) -> dict:
    out = subprocess.run([sys.executable, str(WORKER), *map(str, args)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"scale_worker {args[0]} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _once(seconds: float) -> Timing:
    return Timing(seconds, seconds, seconds, 1)


def cache_name(size: dict) -> str:
    """The file name of a synthetic file of ``size`` (FULL or QUICK): the size and the generator's version."""
    from core.data.demo import CACHE_VERSION

    return f"bench_burn_sham_{size['cells_per_group'] * 12}x{size['genes']}_{CACHE_VERSION}.h5ad"


def _data_file(quick: bool, scratch: Path) -> tuple[Path, dict]:
    """(path, build record): built now, or read from the cache with the record of the run that built it."""
    from core.paths import cache_dir

    size = QUICK if quick else FULL
    path = (scratch if quick else cache_dir()) / cache_name(size)
    record = path.with_suffix(".build.json")
    if path.exists() and record.exists():
        return path, {**json.loads(record.read_text()), "cached": True}
    built = _worker("build", path, size["cells_per_group"], size["genes"])
    record.write_text(json.dumps(built))
    return path, {**built, "cached": False}


def run(quick: bool) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        scratch = Path(tmp)
        path, built = _data_file(quick, scratch)
        label = f"{built['cells']} cells x {built['genes']} genes"
        rows = [Row("scale", f"build the synthetic burn/sham file, {label} (demo generator)",
                    _once(built["seconds"]), extra={"cached": built["cached"], "peak_mb": built["peak_mb"],
                                                    "generate_s": round(built["generate_s"], 1)})]
        vel = _worker("velocity", path)
        rows.append(Row("scale", f"velocity pipeline (stochastic) to v_z + confidence, {label}", _once(vel["seconds"]),
                        target="<= 60 s, <= 8 GB peak", met=vel["seconds"] <= 60 and vel["peak_mb"] <= 8192,
                        extra={"peak_mb": vel["peak_mb"], "import_s": round(vel["import_s"], 1),
                               **{f"{k}_s": round(v, 1) for k, v in vel["steps_s"].items()}}))

        ep = _worker("epoch", path, scratch / "runs")
        rows.append(Row("scale", f"one training epoch of the demo model over {label} (from scratch)",
                        _once(ep["seconds"]), extra={"peak_mb": ep["peak_mb"], "steps": ep["steps"],
                                                     "train_cells_per_s": ep["train_cells_per_s"]}))

    size = TAHOE_QUICK if quick else TAHOE
    shape = f"hidden {size['hidden']}, {size['layers']} layers, {size['sets']}x{size['set_len']} cells"
    plain = None
    for mhc in (0, 1):
        step = _worker("step", *size.values(), mhc)
        timing = Timing.of(step["samples_s"])
        name = f"ST-Tahoe-sized training step, LoRA{' + mHC' if mhc else ''}, {shape}, CPU"
        row = Row("scale", name, timing, *(("same step without mHC", plain) if mhc else ()),
                  extra={"peak_mb": step["peak_mb"], "cells_per_s": round(step["cells"] / timing.median_s, 1),
                         "parameters_m": step["parameters_m"], "trainable_m": step["trainable_m"]})
        plain = plain or timing
        rows.append(row)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    for row in rows:
        row.extra["load_average"] = load
    return rows
