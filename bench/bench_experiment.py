"""The experiment runner's overhead over the runs it launches (``python -m core experiment``).

Row: an experiment of tiny runs on the demo (a 1-layer model, 2 steps, so that what the runner adds is not
hidden under long trainings), run one at a time (``jobs=1``) by ``run_experiment``, against the same
``python -m core train`` and ``python -m core evaluate`` commands run directly one after another, with the
same threads. The two are timed alternately, each in a fresh runs folder, so a busy machine slows both alike.
What the runner adds: parsing every arm's overrides, the run-folder bookkeeping, polling for the end of each
run (every 0.5 s), and analysing and writing the results. Target: <= 1.05x (5% overhead).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import Row, Timing

REPO = Path(__file__).resolve().parents[1]
TINY = ["training.max_steps=2", "training.batch_size=2", "training.accelerator=cpu", "model.kwargs.hidden_dim=16",
        "model.kwargs.n_layers=1", "model.kwargs.n_heads=2", "model.kwargs.cell_set_len=8"]


def _spec(quick: bool):
    from core.experiment.arms import parse_arms
    from core.experiment.runner import ExperimentSpec

    # full: 2 runs x 3 repeats x 2 sides = 12 trainings and evaluations, about 20 s each on 2 unloaded cores
    return ExperimentSpec("bench", parse_arms("base" if quick else "base,+mhc"), [0], TINY)


def _direct(spec, root: Path, threads: int) -> None:
    """The runs the experiment launches, as plain commands one after another."""
    from core.experiment.runner import plan

    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    for job in plan(spec, root):
        train = [sys.executable, "-m", "core", "train", *job.overrides, f"training.num_threads={threads}",
                 f"run.dir={job.run_dir}"]
        evaluate = [sys.executable, "-m", "core", "evaluate", str(job.run_dir), "--no-predictions"]
        for command in (train, evaluate):
            subprocess.run(command, cwd=REPO, env=env, check=True, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run(quick: bool) -> list[Row]:
    from core.data.demo import load_demo
    from core.experiment.runner import device_slots, run_experiment

    load_demo("burn_sham", with_velocity=True)  # build the caches outside the timings
    spec = _spec(quick)
    _, _, threads = device_slots(1)
    repeats = 1 if quick else 3
    runner, direct = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="bench-exp-") as root:
            start = time.perf_counter()
            _direct(spec, Path(root) / "direct", threads)
            direct.append(time.perf_counter() - start)
            start = time.perf_counter()
            results = run_experiment(spec, root=Path(root) / "runner", jobs=1, log=lambda _: None, progress=False)
            runner.append(time.perf_counter() - start)
            if results["failed"]:
                raise RuntimeError(f"runs of the experiment failed: {results['failed']}")
    timing, baseline = Timing.of(runner), Timing.of(direct)
    runs = len(spec.arms) * len(spec.seeds)
    return [Row("experiment", f"runner overhead, {runs} tiny demo runs one at a time (train + evaluate)", timing,
                "the same commands run directly", baseline, target="<= 1.05x",
                met=timing.median_s / baseline.median_s <= 1.05,
                extra={"runs": runs, "overhead_s": round(timing.median_s - baseline.median_s, 2)})]
