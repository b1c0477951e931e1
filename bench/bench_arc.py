"""Our ST training step against arc-state 0.11.1's own (issue 15, target 1: <= 0.8x at hidden 128 and 512, and
the gain must hold for mHC runs: a row with the same dynamic mHC around both models' blocks).

Both run in one process of a Python with arc-state installed, on the same weights and batch: see
bench/arc_step_worker.py. ``./dev bench --peers`` builds a venv with arc-state (.venv-peers) and points
``ARC_STATE_PYTHON`` at its Python
(or give ``--peers PYTHON``); without it the row is reported as skipped, so the default bench needs no arc-state.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from bench.harness import Row, Timing

WORKER = Path(__file__).with_name("arc_step_worker.py")
TARGET = 0.8
# how a row runs: (our arm's label, what Arc's arm adds, the worker's flags)
_HOW = {"eager": ("ours, imported Arc model", "", []),
        "compiled": ("ours, compiled with training.compile", "", ["--compile"]),
        "mhc": ("ours with dynamic mHC, imported Arc model", " with the same mHC", ["--mhc"])}


def run(quick: bool) -> list[Row]:
    python = os.environ.get("ARC_STATE_PYTHON")
    rows = []
    # eager at both sizes; compiled (training.compile=true) at the smaller, where its minutes of compile fit a bench;
    # both models with the same mHC at the smaller
    cases = ((64, "eager"), (64, "compiled"), (64, "mhc")) if quick else (
        (128, "eager"), (512, "eager"), (128, "compiled"), (128, "mhc"))
    for hidden, how in cases:
        ours_label, arc_label, how_flags = _HOW[how]
        name = f"ST training step ({ours_label}) vs arc-state's training_step{arc_label}, hidden {hidden}"
        if not python:
            rows.append(Row("arc", name, None, extra={"skipped": "run with --peers (a Python with arc-state 0.11.1)"}))
            continue
        flags = (["--quick"] if quick else []) + how_flags
        out = subprocess.run([python, str(WORKER), "--hidden", str(hidden), *flags],
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        result = json.loads(out)
        ours, arc = Timing(**result["ours"]), Timing(**result["arc"])
        extra = {"size": result["size"], "max_abs_diff": result["max_abs_diff"]}
        if how == "compiled":
            extra["compile_s"] = round(result["compile_s"], 1)
        row = Row("arc", name, ours, baseline_name="arc-state training_step" + arc_label, baseline=arc,
                  target=f"<= {TARGET}x", extra=extra)
        row.met = row.ratio <= TARGET
        rows.append(row)
    return rows
