"""The README's command-line path on the demo, end to end, as separate processes: train, evaluate, then figures.
The figures step once failed for every evaluated demo run (it loaded the demo without its velocity); one data-set
loader (core.data.datasets) now answers for all of them."""

import os
import subprocess
import sys

import pytest
from support import TINY_MODEL

TINY = [*TINY_MODEL, "training.max_steps=4", "training.val_freq=2", "model.kwargs.lora.enable=false"]


def _cli(args, env):
    done = subprocess.run([sys.executable, "-m", "core", *args], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, f"python -m core {' '.join(args)} exited {done.returncode}:\n{done.stderr[-2000:]}"
    return done.stdout


@pytest.mark.slow
def test_demo_train_then_evaluate_then_figures_writes_the_velocity_figures(tmp_path, demo_with_velocity):
    env = dict(os.environ, ST_RUNS_DIR=str(tmp_path / "runs"))
    _cli(["train", *TINY, "run.name=e2e"], env)
    _cli(["evaluate", "e2e"], env)
    out = tmp_path / "figures"
    printed = _cli(["figures", "e2e", "--out", str(out), "--formats", "html"], env)
    written = {p.stem for p in out.iterdir()}
    assert {"cos_delta_z_v_z_per_cell_type", "norm_delta_z_vs_v_z", "arrows_delta_z_v_z"} <= written, written
    assert "no Δz-vs-velocity figures" not in printed
    assert all(p.stat().st_size > 1000 for p in out.iterdir())
