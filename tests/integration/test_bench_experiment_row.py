"""Every benchmark row added for the experiment runner runs in its --quick form and reports what it declares
(no timing is judged here: the machine's load decides those; bench/ is where timing belongs)."""

import json
import os
import subprocess
import sys

import pytest

from core.runs import REPO_ROOT

pytestmark = pytest.mark.slow  # trains and evaluates real (tiny) runs


def test_the_runner_overhead_row_runs_quick_and_reports_a_ratio_against_direct_commands(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, ST_RUNS_DIR=str(tmp_path / "runs"))
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "experiment", "--json", str(out)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["failed"] == {} and len(result["rows"]) == 1
    row = result["rows"][0]
    assert row["group"] == "experiment" and row["target"] == "<= 1.05x" and row["extra"]["runs"] == 1
    assert row["timing"]["median_s"] > 0 and row["baseline"]["median_s"] > 0
    assert row["ratio"] == pytest.approx(row["timing"]["median_s"] / row["baseline"]["median_s"])
    assert row["met"] == (row["ratio"] <= 1.05)
    assert row["extra"]["overhead_s"] == pytest.approx(row["timing"]["median_s"] - row["baseline"]["median_s"],
                                                       abs=0.01)
    assert not (tmp_path / "runs").exists()  # the bench writes its runs into temporary folders only
