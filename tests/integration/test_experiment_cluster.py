"""``--launcher slurm`` / ``submitit-local``: the same experiment submitted through submitit (its local
executor here: there is no Slurm on this machine), and a one-line refusal where Slurm is not reachable."""

import json
import subprocess
import sys

import pytest

from core.errors import ConfigError
from core.experiment.arms import parse_arms
from core.experiment.runner import ExperimentSpec, experiment_dir, run_experiment
from core.runs import REPO_ROOT

TINY = ["training.max_steps=2", "training.batch_size=2", "training.accelerator=cpu", "model.kwargs.hidden_dim=16",
        "model.kwargs.n_layers=1", "model.kwargs.n_heads=2", "model.kwargs.cell_set_len=8",
        "data.kwargs.embed_key=X_pca", "data.kwargs.pert_col=condition", "data.kwargs.control_pert=sham",
        "data.kwargs.cell_type_key=cell_types_simple_short", "data.kwargs.batch_col=mouse_id",
        "data.kwargs.velocity_key=velocity_pca", "data.kwargs.confidence_key=velocity_confidence"]


def test_slurm_without_sbatch_is_one_line_and_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no sbatch anywhere
    spec = ExperimentSpec("nocluster", parse_arms("base"), [0], TINY)
    with pytest.raises(ConfigError, match="Slurm is not reachable from here") as caught:
        run_experiment(spec, root=tmp_path / "runs", launcher="slurm", log=lambda _: None)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "runs" / "nocluster.base.s0").exists()


def test_slurm_settings_become_the_job_s_sbatch_lines(tmp_path, monkeypatch):
    """With Slurm's commands on PATH (stand-ins here) the executor is submitit's Slurm one, and the options are
    the #SBATCH lines submitit writes (submitting is not tried: there is no cluster)."""
    import os

    from submitit.slurm.slurm import _make_sbatch_string

    from core.experiment.cluster import ClusterOptions, make_executor

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).write_text("#!/bin/sh\nexit 1\n")
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    executor = make_executor("slurm", tmp_path / "exp", ClusterOptions("gpu", 30, 8, 1))
    assert type(executor).__name__ == "SlurmExecutor" and executor.folder == (tmp_path / "exp" / "submitit")
    lines = _make_sbatch_string(command="x", folder=str(tmp_path), **executor.parameters).splitlines()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=30", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --gpus-per-node=1"):
        assert line in lines
    (bin_dir / "srun").unlink()
    with pytest.raises(ConfigError, match="no srun on PATH"):
        make_executor("slurm", tmp_path / "exp")


def test_the_cli_refuses_slurm_here_with_exit_2_and_no_traceback(tmp_path):
    import os
    import shutil

    if shutil.which("sbatch"):
        pytest.skip("this machine has Slurm")
    env = dict(os.environ, ST_RUNS_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "core", "experiment", "--arms", "base", "--seeds", "1",
                           "--launcher", "slurm", *TINY], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Slurm is not reachable" in lines[0] and "Traceback" not in done.stderr


@pytest.mark.slow  # trains two tiny runs through submitit's local executor
def test_submitit_local_runs_the_experiment_as_the_local_runner_does(tmp_path, small_demo):
    data_path = tmp_path / "small_demo.h5ad"
    small_demo.write_h5ad(data_path)
    spec = ExperimentSpec("sub", parse_arms("base,+mhc"), [0], [f"data.kwargs.path={data_path}", *TINY])
    runs = tmp_path / "runs"
    results = run_experiment(spec, root=runs, launcher="submitit-local", log=lambda _: None)
    assert results["failed"] == [] and results["counts"]["trained"] == 2
    for name in ("sub.base.s0", "sub.mhc.s0"):
        assert json.loads((runs / name / "status.json").read_text())["state"] == "completed"
    # the verdict is computed from the runs' own evaluations, as for a local experiment
    by_run = {name: json.loads((runs / name / "eval" / "metrics.json").read_text())["overall"]["model"]
              for name in ("sub.base.s0", "sub.mhc.s0")}
    row = next(c for c in results["comparisons"] if c["metric"] == "energy_distance")
    assert row["differences"] == pytest.approx([by_run["sub.mhc.s0"]["energy_distance"]
                                                - by_run["sub.base.s0"]["energy_distance"]], rel=1e-9)
    assert (experiment_dir("sub", runs) / "submitit").is_dir()  # submitit's own logs beside the results
    again = run_experiment(spec, root=runs, launcher="submitit-local", log=lambda _: None)
    assert again["counts"] == {"skipped": 2, "trained": 0, "resumed": 0, "evaluated": 0, "failed": 0}
