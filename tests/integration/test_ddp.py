"""DDP on more than one device (issue 15, target 4), run for real on the CPU: ``python -m core train`` with
training.devices=2 and training.strategy=ddp starts two processes (gloo) that train one run. Multi-GPU runs take
the same code path (Lightning's re-launch, ST_SHARED_RUN_DIR, rank-zero writing, the reduced validation)."""

import json
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from support import REPO, SMALL_DEMO_KEYS, TINY_MODEL, assert_compiled_run_matches_eager

from core.config import load_config
from core.runs import load_checkpoint, read_metrics, read_status
from core.training.run import train

# what a launcher or an outer DDP job would hand down; the test's two processes must agree on their own port
# (Lightning picks a free one when MASTER_PORT is unset) and must not think they are ranks of another job
_INHERITED = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "GROUP_RANK",
              "LOCAL_WORLD_SIZE", "ST_SHARED_RUN_DIR")


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in _INHERITED and not k.startswith(("SLURM_", "TORCHELASTIC_", "PL_"))}
    if sys.platform == "linux":  # gloo on the loopback: a CI container's host name may not resolve to itself
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    return env


def _train_in_two_processes(args: list[str]) -> tuple[int, subprocess.CompletedProcess]:
    command = [sys.executable, "-m", "core", "train", *args, "training.devices=2", "training.strategy=ddp"]
    # own session: a hang is ended with both ranks (Lightning's second process is a child of the first)
    proc = subprocess.Popen(command, cwd=REPO, env=_clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=600)  # a hang guard for a loaded machine, not a time limit
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    return proc.pid, subprocess.CompletedProcess(command, proc.returncode, out, err)


@pytest.mark.slow
def test_two_cpu_processes_train_one_run_with_the_sets_split_between_them(small_demo, tmp_path):
    data = tmp_path / "d.h5ad"
    small_demo.write_h5ad(data)
    args = [*TINY_MODEL, f"data.kwargs.path={data}", *SMALL_DEMO_KEYS, "training.max_epochs=1",
            "model.kwargs.lora.enable=false"]
    single = train(load_config(overrides=[*args, f"run.root={tmp_path / 'one'}"]))

    root = tmp_path / "two"
    pid, proc = _train_in_two_processes([*args, f"run.root={root}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    # one run folder: the second rank found rank 0's through ST_SHARED_RUN_DIR instead of making its own
    (run_dir,) = list(root.iterdir())
    status = read_status(run_dir)
    assert status["state"] == "completed" and status["pid"] == pid  # written by rank 0, the launched process
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["state"] == "completed" and summary["device"] == "cpu"
    log = (run_dir / "log.txt").read_text()
    assert log.count("completed after") == 1 and log.count("training on cpu") == 1  # rank 1 logs nowhere here

    one, two = read_metrics(single), read_metrics(run_dir)
    train_one, train_two = one[one["split"] == "train"], two[two["split"] == "train"]
    # one metrics row per step, not one per rank
    assert train_two["step"].tolist() == list(range(1, summary["steps"] + 1))
    val_two = two[two["split"] == "val"]
    assert val_two["step"].is_unique and val_two["step"].iloc[0] == 0
    # the epoch's sets were split between the ranks (DistributedSampler): n sets at batch b take ceil(n / b)
    # steps on one process and ceil(ceil(n / 2) / b) on two, each step holding both ranks' batches
    batch, set_len = 4, 16
    n_sets = int(train_one["cells"].sum()) // set_len
    assert len(train_one) == math.ceil(n_sets / batch) and n_sets > 2 * batch
    per_rank = math.ceil(n_sets / 2)
    assert len(train_two) == math.ceil(per_rank / batch) < len(train_one)
    assert int(train_two["cells"].sum()) == 2 * per_rank * set_len  # an odd count is padded by one repeated set
    # validation is over all of the fixed validation sets, half on each rank, summed across them: before any
    # step (same seed, same initial weights) it equals the single process's
    val_one = one[one["split"] == "val"]
    assert val_two["val_loss"].iloc[0] == pytest.approx(val_one["val_loss"].iloc[0], rel=1e-5)
    # it trained: every number is finite and the validation loss went down from step 0 (deterministic seeds)
    numbers = two.select_dtypes("number").to_numpy(dtype=float)
    assert np.isfinite(numbers[~np.isnan(numbers)]).all() and np.isfinite(summary["best_val_loss"])
    assert np.isfinite(train_two[["loss", "grad_norm"]].to_numpy()).all()
    assert val_two["val_loss"].iloc[-1] < val_two["val_loss"].iloc[0]
    # each checkpoint exactly once (no second rank's copy, no leftover temp file), and loadable with finite weights
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "final.ckpt", "last.ckpt"]
    final = load_checkpoint(run_dir / "checkpoints" / "final.ckpt")
    assert final["global_step"] == summary["steps"] == len(train_two)
    assert final["state_dict"] and all(np.isfinite(w.float().numpy()).all() for w in final["state_dict"].values())


@pytest.mark.slow
def test_a_compiled_mhc_run_in_two_processes_trains_the_eager_two_process_runs_numbers(small_demo, tmp_path):
    """training.compile under DDP: each rank compiles its model in place before Lightning wraps it, and the
    gradients still meet in the all-reduce (the losses would part after the first step if they did not)."""
    from core.training.compile import missing_compiler

    if missing_compiler("cpu"):
        pytest.skip(f"inductor cannot compile here: {missing_compiler('cpu')}")
    data = tmp_path / "d.h5ad"
    small_demo.write_h5ad(data)
    args = [*TINY_MODEL, f"data.kwargs.path={data}", *SMALL_DEMO_KEYS, "training.max_steps=3", "training.val_freq=3",
            "model.kwargs.lora.enable=false", "model.kwargs.use_mhc=true"]
    runs = {}
    for name, flag in (("eager", "false"), ("compiled", "true")):
        root = tmp_path / name
        _, proc = _train_in_two_processes([*args, f"training.compile={flag}", f"run.root={root}"])
        assert proc.returncode == 0, proc.stderr[-3000:]
        (runs[name],) = list(root.iterdir())
    assert_compiled_run_matches_eager(runs["eager"], runs["compiled"], steps=3)
