"""One trainer per run folder (issue 12, point 5): a second resume or trainer on a folder that a live process
trains is refused in one line before it writes anything; a lock left by a killed trainer is detected by its
pid and taken over; the trainer's lock is gone when it ends, however it ends."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import lightning as L
import pytest
from support import wait_until

from core import runs
from core.errors import DataError, UserError
from core.runs import launcher
from core.runs import lock as run_lock
from core.runs.lock import RunLockedError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HOLDER = textwrap.dedent(
    """
    import sys, time
    from core.runs import lock as run_lock
    run_lock.acquire(sys.argv[1], adopt=True)
    print("locked", flush=True)
    time.sleep(600)
    """
)


def _wait(predicate, timeout=120.0):
    wait_until(predicate, timeout)


@pytest.fixture
def held(tmp_path):
    """A run folder whose lock a live process holds; yields (folder, process)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], cwd=REPO, stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.stdout.readline().strip() == "locked"  # blocks until it holds the lock: no race
    yield run_dir, proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_a_live_holder_refuses_everyone_else_in_one_line(held):
    run_dir, proc = held
    before = (run_dir / run_lock.LOCK_NAME).read_text()
    for adopt in (False, True):
        with pytest.raises(RunLockedError, match=f"already being trained by process {proc.pid}") as err:
            run_lock.acquire(run_dir, adopt=adopt)
        assert "\n" not in str(err.value)
    run_lock.release(run_dir)  # not ours: left alone
    assert (run_dir / run_lock.LOCK_NAME).read_text() == before


def test_a_killed_holders_lock_is_stale_and_taken_over(held):
    run_dir, proc = held
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run_dir / run_lock.LOCK_NAME).exists()  # SIGKILL leaves it behind
    run_lock.acquire(run_dir)
    assert json.loads((run_dir / run_lock.LOCK_NAME).read_text())["pid"] == os.getpid()
    run_lock.release(run_dir)
    assert not (run_dir / run_lock.LOCK_NAME).exists()


def test_a_recycled_pid_does_not_keep_a_lock_alive(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # the lock names this (live) process but predates it by an hour: the pid was recycled
    (run_dir / run_lock.LOCK_NAME).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(),
                                                          "time": 1.0}))
    run_lock.acquire(run_dir)
    run_lock.release(run_dir)


def test_resume_is_refused_while_a_trainer_holds_the_folder_and_writes_nothing(held):
    run_dir, proc = held
    (run_dir / "config.yaml").write_text("training:\n  seed: 0\n")
    status = {"state": "cancelled", "message": "cancelled by STOP", "pid": 1, "heartbeat": time.time()}
    (run_dir / "status.json").write_text(json.dumps(status))
    (run_dir / "STOP").write_text("cancel")
    snapshot = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    with pytest.raises(RunLockedError):
        runs.resume_run(run_dir)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == snapshot


def test_the_cli_says_so_with_exit_2(held, capsys):
    from core.__main__ import main

    run_dir, _ = held
    (run_dir / "config.yaml").write_text("training:\n  seed: 0\n")
    (run_dir / "status.json").write_text(json.dumps({"state": "failed", "message": "x"}))
    assert main(["runs", "resume", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already being trained" in err[0]


def test_a_trainer_started_on_a_locked_folder_writes_nothing(held):
    from core.config import load_config
    from core.training.run import train

    run_dir, _ = held
    with pytest.raises(RunLockedError):
        train(load_config(None, [f"run.dir={run_dir}", "training.max_steps=1"]))
    assert sorted(p.name for p in run_dir.iterdir()) == [run_lock.LOCK_NAME]


def test_the_trainer_releases_its_lock_when_it_fails(tmp_path):
    from core.config import load_config
    from core.training.run import train

    run_dir = tmp_path / "run"
    with pytest.raises(DataError, match="no file at"):
        train(load_config(None, [f"run.dir={run_dir}", f"data.kwargs.path={tmp_path / 'missing.h5ad'}"]))
    assert runs.read_status(run_dir)["state"] == "failed"
    assert not (run_dir / run_lock.LOCK_NAME).exists()


@pytest.mark.slow
def test_two_resumes_at_once_start_one_trainer(tmp_path, monkeypatch):
    """Both launchers race for the lock; exactly one spawns a trainer, the other is refused in one line (by the
    lock, or by the status check when the winner's 'queued' is already on disk: either way, a refusal)."""
    from concurrent.futures import ThreadPoolExecutor

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("training:\n  seed: 0\n")
    (run_dir / "status.json").write_text(json.dumps({"state": "cancelled", "message": "x"}))
    started = []

    def command(run_dir, overrides, config=None):
        started.append(1)
        return [sys.executable, "-c", HOLDER, str(run_dir)]

    monkeypatch.setattr(launcher, "_train_command", command)
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(runs.resume_run, run_dir) for _ in range(2)]
        outcomes = []
        for future in futures:
            try:
                outcomes.append(future.result())
            except UserError as err:
                outcomes.append(err)
    refusals = [o for o in outcomes if isinstance(o, UserError)]
    assert len(refusals) == 1 and len(started) == 1
    assert "already being trained" in str(refusals[0]) or "still queued" in str(refusals[0])
    child = launcher._CHILDREN[run_dir.resolve()]
    _wait(lambda: json.loads((run_dir / run_lock.LOCK_NAME).read_text())["pid"] == child.pid)
    child.kill()
    child.wait()


@pytest.mark.slow
def test_a_real_resume_hands_the_lock_to_its_trainer_and_completes(small_demo, tmp_path):
    """runs.resume_run with the real trainer: the launcher's lock passes to the child, the run completes at its
    full step count, and no lock is left behind."""
    from core.config import load_config
    from core.training.run import train

    data = tmp_path / "d.h5ad"
    small_demo.write_h5ad(data)
    run_dir = tmp_path / "run"
    overrides = [f"data.kwargs.path={data}", "data.kwargs.pert_col=condition", "data.kwargs.control_pert=sham",
                 "data.kwargs.cell_type_key=cell_types_simple_short", "data.kwargs.embed_key=X_pca",
                 "model.kwargs.hidden_dim=16", "model.kwargs.n_layers=1", "model.kwargs.n_heads=2",
                 "model.kwargs.cell_set_len=8", "training.max_steps=12", "training.accelerator=cpu",
                 f"run.dir={run_dir}"]

    class StopAt(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 5:
                (run_dir / "STOP").write_text("cancel")

    train(load_config(None, overrides), callbacks=[StopAt()])
    assert runs.read_status(run_dir)["state"] == "cancelled"
    runs.resume_run(run_dir)
    child = launcher._CHILDREN[run_dir.resolve()]
    child.wait(timeout=600)
    status = runs.read_status(run_dir)
    assert status["state"] == "completed" and status["step"] == 12, status
    assert not (run_dir / run_lock.LOCK_NAME).exists()
