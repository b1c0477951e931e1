"""Running an experiment's jobs on a cluster through submitit (``python -m core experiment --launcher slurm``).

Each (arm, seed) becomes one submitit job that does on its node what the local runner does on this machine:
``python -m core train`` into the run folder (or resumes it, or only evaluates it), then ``python -m core
evaluate``. The run folders live in the same runs folder, so it must be on a file system the nodes share; the
results are read back from them exactly as for a local experiment. submitit's local executor
(``--launcher submitit-local``) runs the same jobs as processes of this machine: the tests use it, and a user
can use it to try a cluster setup before submitting.

Slurm settings: ``ClusterOptions`` (partition, time limit, CPUs and GPUs per job), passed to submitit's
``update_parameters``; submitit's own logs go to ``<experiment folder>/submitit/``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigError

LAUNCHERS = ("local", "slurm", "submitit-local")
POLL_S = 0.5


@dataclass
class ClusterOptions:
    partition: str | None = None
    timeout_min: int = 60
    cpus_per_task: int = 4
    gpus_per_node: int = 0


def make_executor(launcher: str, folder: Path, options: ClusterOptions | None = None):
    """A submitit executor for ``launcher`` ('slurm' or 'submitit-local'), or a one-line ConfigError saying why
    there cannot be one here."""
    if launcher not in LAUNCHERS[1:]:
        raise ConfigError(f"--launcher must be one of {', '.join(LAUNCHERS)}; got {launcher!r}")
    try:
        import submitit
    except ImportError:
        raise ConfigError(f"--launcher {launcher} needs submitit: pip install submitit") from None
    options = options or ClusterOptions()
    logs = Path(folder) / "submitit"
    if launcher == "submitit-local":
        executor = submitit.LocalExecutor(folder=logs)
        executor.update_parameters(timeout_min=options.timeout_min)
        return executor
    missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
    if missing:
        raise ConfigError(f"--launcher slurm: Slurm is not reachable from here (no {' or '.join(missing)} on PATH); "
                          "run the command on a Slurm login node, or leave out --launcher to run on this machine")
    executor = submitit.SlurmExecutor(folder=logs)
    params = {"time": options.timeout_min, "cpus_per_task": options.cpus_per_task}
    if options.partition:
        params["partition"] = options.partition
    if options.gpus_per_node:
        params["gpus_per_node"] = options.gpus_per_node
    executor.update_parameters(**params)
    return executor


def cluster_job(need: str, overrides: list[str], name: str, root: str, extra: list[str]) -> str:
    """What one submitted job runs on its node: train (or resume) the run, then evaluate it. Returns the run's
    final state ('done', or 'failed: <why>'); picklable by reference, as submitit needs."""
    from core.runs import TERMINAL_STATES, launch_run, read_status, resume_run

    run_dir = Path(root) / name
    env = {"OMP_NUM_THREADS": os.environ.get("SLURM_CPUS_PER_TASK", "1")}
    if need == "restart":
        shutil.rmtree(run_dir, ignore_errors=True)
    if need == "resume":
        resume_run(run_dir, extra, extra_env=env)
    elif need in ("train", "restart"):
        run_dir = launch_run([*overrides, *extra], name, root=root, extra_env=env)
    if need != "evaluate":
        while (state := read_status(run_dir)["state"]) not in (*TERMINAL_STATES, "interrupted"):
            time.sleep(POLL_S)
        if state != "completed":
            return f"failed: training {state}: {read_status(run_dir).get('message') or 'see log.txt'}"
    with open(run_dir / "eval_log.txt", "ab") as handle:
        code = subprocess.call([sys.executable, "-m", "core", "evaluate", str(run_dir), "--no-predictions"],
                               stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
                               env=dict(os.environ, PYTHONUNBUFFERED="1", **env))
    return "done" if code == 0 else f"failed: evaluation failed (exit {code})"
