"""Starting, resuming and cancelling a training subprocess: each run in its own session (process group), so
cancel can stop it and its workers, and a Ctrl-C in the launcher does not."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from core.errors import RunFolderError, UserError
from core.io.atomic import atomic_write_json, atomic_write_text, disk_error
from core.paths import REPO_ROOT, runs_root
from core.runs.layout import ACTIVE_STATES, TERMINAL_STATES, new_run_dir
from core.runs.reader import _process_alive, _read_json, read_status

_CHILDREN: dict[Path, subprocess.Popen] = {}


def _watch_child(run_dir: Path, child: subprocess.Popen) -> None:
    """Wait for the child (which also reaps it) and, if it died without recording a final state, say so.

    A non-zero exit (e.g. a bad override rejected before training started) becomes ``failed`` with the
    last line of log.txt. A death by signal (SIGKILL, power cut) is left as is: ``read_status`` reports
    it as interrupted, and it can be resumed.
    """
    code = child.wait()
    _CHILDREN.pop(run_dir, None)
    status = _read_json(run_dir / "status.json") or {}
    if status.get("state") not in ACTIVE_STATES or code < 0:
        return
    if (run_dir / "STOP").exists():
        state, message = "cancelled", "cancelled before training finished"
    elif code == 0:
        state, message = "failed", "the training process exited without recording a result; see log.txt"
    else:
        state, message = "failed", _last_log_line(run_dir) or f"the training process exited with code {code}"
    status.update(state=state, message=message, ended=time.time(), exit_code=code, heartbeat=time.time())
    try:
        atomic_write_json(run_dir / "status.json", status)
    except (OSError, UserError):
        pass


def _last_log_line(run_dir: Path) -> str:
    try:
        lines = (run_dir / "log.txt").read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if line.strip():
            return line.strip()[:500]
    return ""


def _train_command(run_dir: Path, overrides: list[str], config: Path | None = None) -> list[str]:
    command = [sys.executable, "-m", "core", "train"]
    if config is not None:
        command += ["--config", str(config)]
    # run.dir goes last, so no override (form text included) can move where the run writes
    return [*command, *[str(o) for o in overrides], f"run.dir={run_dir}"]


def _spawn(run_dir: Path, command: list[str], status: dict, extra_env: dict | None = None) -> subprocess.Popen:
    """Write ``status`` (queued), then start ``command`` in a new session with its output appended to
    log.txt, record its pid, and watch it from a daemon thread (see ``_watch_child``). ``extra_env``: more
    environment variables for the child (e.g. CUDA_VISIBLE_DEVICES, from the experiment runner)."""
    atomic_write_json(run_dir / "status.json", status)
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(extra_env or {}))

    try:
        with open(run_dir / "log.txt", "ab") as log:
            log.write(f"$ {' '.join(command)}\n".encode())
            log.flush()
            child = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
    except OSError as err:
        friendly = disk_error(err, run_dir / "log.txt", "write")
        try:
            failed = dict(status, state="failed", ended=time.time(), message=str(friendly or err))
            atomic_write_json(run_dir / "status.json", failed)
        except (OSError, UserError):
            pass
        if friendly is None:
            raise
        raise friendly from err
    # Record the child's pid unless the trainer already wrote its own status (it needs seconds to import
    # torch, so this nearly always wins; if not, the trainer's next heartbeat restores its state anyway).
    current = _read_json(run_dir / "status.json") or {}
    if current.get("state") == "queued" and current.get("pid") == os.getpid():
        atomic_write_json(run_dir / "status.json", dict(current, pid=child.pid))
    _CHILDREN[run_dir] = child
    threading.Thread(target=_watch_child, args=(run_dir, child), name="run-watch", daemon=True).start()
    return child


def _queued_fields(now: float) -> dict:
    return {
        "state": "queued",
        "message": "",
        "pid": os.getpid(),
        "launcher_pid": os.getpid(),
        "host": socket.gethostname(),
        "heartbeat": now,
        "ended": None,
        "eta_s": None,
    }


def launch_run(overrides: list[str], name: str, root: str | os.PathLike | None = None,
               extra_env: dict | None = None) -> Path:
    """Create a run folder with status ``queued`` and start ``python -m core train run.dir=<dir>
    <overrides>`` in a new session (its own process group, so cancel can stop it and its workers and a
    Ctrl-C in the launcher does not). stdout and stderr are appended to log.txt. Returns the run folder."""
    root = Path(root) if root is not None else runs_root()
    run_dir = new_run_dir(root, name)
    now = time.time()
    status = {
        **_queued_fields(now),
        "step": 0,
        "total_steps": None,
        "progress": 0.0,
        "created": now,
        "started": None,
        "device": None,
    }
    _spawn(run_dir, _train_command(run_dir, overrides), status, extra_env)
    return run_dir


def resume_run(run_dir: str | os.PathLike, overrides: list[str] = (), extra_env: dict | None = None) -> Path:
    """Start an interrupted, failed or cancelled run again in its own folder: ``python -m core train
    --config <run>/config.yaml run.dir=<run> training.resume=true``, which continues from
    checkpoints/last.ckpt (from the start if there is none). Refuses a run that is still going."""
    run_dir = Path(run_dir).resolve()
    status = read_status(run_dir)
    if status["state"] in ACTIVE_STATES:
        raise RunFolderError(f"run {run_dir.name} is still {status['state']}; cancel it first or let it finish")
    if status["state"] == "completed":
        raise RunFolderError(f"run {run_dir.name} has already completed; launch a new run to train further")
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise RunFolderError(
            f"run {run_dir.name} has no config.yaml (it stopped before training began); launch it again instead"
        )
    from core.runs import lock

    lock.acquire(run_dir)  # before anything is written: a second resume must not touch the first's files
    try:
        (run_dir / "STOP").unlink(missing_ok=True)
        raw = _read_json(run_dir / "status.json") or {}
        for stale in ("exit_code", "stopping"):
            raw.pop(stale, None)
        fields = {**raw, **_queued_fields(time.time())}
        fields["message"] = "resuming from checkpoints/last.ckpt"
        command = _train_command(run_dir, ["training.resume=true", *overrides], config=config)
        child = _spawn(run_dir, command, fields, extra_env)
    except BaseException:
        lock.release(run_dir)
        raise
    lock.hand_over(run_dir, child.pid)  # the trainer holds it from now on (core/runs/lock.py)
    return run_dir


def _trainer_alive(status: dict) -> bool | None:
    """Whether the run's own process (not its launcher) is alive; None when it cannot be told from here
    (no trainer pid recorded yet, or the run lives on another host)."""
    pid = status.get("pid")
    if not isinstance(pid, int) or pid == status.get("launcher_pid"):
        return None
    if status.get("host") not in (None, socket.gethostname()):
        return None
    return _process_alive(pid, status.get("heartbeat"))


def _signal_run(status: dict, sig: int) -> bool:
    """Send ``sig`` to the run's process group (its own session, from launch_run) or to the process
    alone; never to this process or its group, nor to a pid that is not the trainer's."""
    pid = status.get("pid")
    if pid == os.getpid() or not _trainer_alive(status):
        return False
    try:
        pgid = os.getpgid(pid)
        if pgid == pid and pgid != os.getpgid(0):
            os.killpg(pgid, sig)
        else:
            os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _wait_until(predicate, timeout: float, poll: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)


def cancel_run(
    run_dir: str | os.PathLike, grace_s: float = 2.0, kill_after_s: float = 3.0, saving_s: float = 60.0
) -> dict:
    """Ask a run to stop and make sure it does; returns its final status (as ``read_status``).

    Writes STOP (the trainer checks it every step, says ``stopping`` in its status, saves its checkpoints
    and ends as ``cancelled``). If after ``grace_s`` the trainer has not even seen STOP, SIGTERM goes to its
    process group, and SIGKILL after a further ``kill_after_s``; a trainer that has seen STOP gets up to
    ``saving_s`` to finish saving first. A run that never recorded its end is then marked ``cancelled``.
    """
    run_dir = Path(run_dir)
    status = read_status(run_dir)
    if status["recorded_state"] in TERMINAL_STATES:
        return status
    atomic_write_text(run_dir / "STOP", f"cancel requested at {time.time():.3f} by pid {os.getpid()}\n")

    def finished() -> bool:
        current = read_status(run_dir)
        if current["recorded_state"] in TERMINAL_STATES:
            return True
        alive = _trainer_alive(current)
        return alive is False or (alive is None and current["state"] == "interrupted")

    signalled = False
    if not _wait_until(finished, grace_s):
        if read_status(run_dir).get("stopping"):
            _wait_until(finished, saving_s)
    if not finished():
        signalled = _signal_run(read_status(run_dir), signal.SIGTERM)
        if signalled and not _wait_until(finished, kill_after_s):
            _signal_run(read_status(run_dir), signal.SIGKILL)
            _wait_until(finished, 2.0)
    child = _CHILDREN.get(run_dir.resolve())
    if child is not None:
        try:
            child.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            pass
    final = read_status(run_dir)
    if final["recorded_state"] not in TERMINAL_STATES:
        raw = _read_json(run_dir / "status.json") or {}
        now = time.time()
        how = "its process was stopped" if signalled else "its process was not running"
        raw.update(state="cancelled", ended=now, heartbeat=now, message=f"cancelled: {how}")
        atomic_write_json(run_dir / "status.json", raw)
        final = read_status(run_dir)
    return final
