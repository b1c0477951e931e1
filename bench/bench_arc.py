"""An imported Arc State model's training step under our engine against arc-state's own step (issue 11).

Both run in one process of a Python with arc-state installed (``ARC_STATE_PYTHON``, e.g.
/work/venv_arc/bin/python), on the same weights and batch: see bench/arc_step_worker.py. Without it the row is
reported as skipped. Target: our step at most as long as Arc's (<= 1.0x).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from bench.harness import Row, Timing

WORKER = Path(__file__).with_name("arc_step_worker.py")


def run(quick: bool) -> list[Row]:
    python = os.environ.get("ARC_STATE_PYTHON")
    name = "one training step of an imported Arc model (ours) vs arc-state's training_step"
    if not python:
        return [Row("arc", name, None, extra={"skipped": "set ARC_STATE_PYTHON to a Python with arc-state 0.11.1"})]
    out = subprocess.run([python, str(WORKER)] + (["--quick"] if quick else []), capture_output=True, text=True,
                         check=True).stdout.strip().splitlines()[-1]
    result = json.loads(out)
    ours, arc = Timing(**result["ours"]), Timing(**result["arc"])
    row = Row("arc", name, ours, baseline_name="arc-state training_step", baseline=arc, target="<= 1.0x",
              extra={"size": result["size"]})
    row.met = row.ratio <= 1.0
    return [row]
