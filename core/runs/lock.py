"""One trainer per run folder (issue 12, point 5): two ``runs resume X`` at once both trained in the same
folder (380 train rows for 200 steps).

``<run>/trainer.lock`` holds the pid of the process training the run. It is created with ``O_EXCL`` (atomic:
of two processes, one wins), held for the trainer's life and removed when it ends, however it ends, short of
SIGKILL or a power cut. A lock whose pid is gone, or belongs to a process started after the lock was written
(a recycled pid), is stale and is taken over. Locks written on another host are trusted as they are.

The launcher (``resume_run``) takes the lock before it writes anything and hands it to the child by writing
the child's pid into it, so a second resume is refused before it can touch the first one's status.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from pathlib import Path

from core.errors import UserError

LOCK_NAME = "trainer.lock"


class RunLockedError(UserError):
    """Another live process trains this run."""


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # half-written by a process killed while creating it: judged by its age below
    return data if isinstance(data, dict) else {}


def holder_alive(holder: dict | None, path: Path | None = None) -> bool:
    """Whether the lock ``holder`` (its recorded fields) is a live process."""
    if holder is None:
        return False
    if holder.get("host") not in (None, socket.gethostname()):
        return True  # cannot tell from here: another machine's trainer is assumed alive
    pid, since = holder.get("pid"), holder.get("time")
    if not isinstance(pid, int):
        # unreadable lock: a writer that died between create and write; fresh ones may still be being written
        try:
            return path is not None and time.time() - path.stat().st_mtime < 5.0
        except OSError:
            return False
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return not (isinstance(since, (int, float)) and proc.create_time() > since + 1.0)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True


def _fields(pid: int) -> dict:
    return {"pid": pid, "host": socket.gethostname(), "time": time.time()}


def _refusal(run_dir: Path, holder: dict) -> RunLockedError:
    return RunLockedError(
        f"run {run_dir.name} is already being trained by process {holder.get('pid')}; wait for it to finish or "
        f"cancel it ('python -m core runs cancel {run_dir.name}'), then resume")


def acquire(run_dir: str | os.PathLike, adopt: bool = False) -> Path:
    """Take the run's lock for this process; ``RunLockedError`` when a live process holds it. ``adopt`` (the
    trainer): a lock held by this process or by its parent (the launcher handing it over) becomes ours. The
    launcher never adopts, so two threads of one app resuming the same run cannot both go ahead."""
    run_dir = Path(run_dir)
    path, pid = run_dir / LOCK_NAME, os.getpid()
    for _ in range(10):  # each round either creates the lock, adopts it, refuses, or removes a stale one
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            ours = holder and holder.get("host") == socket.gethostname() and holder.get("pid") in (pid, os.getppid())
            if adopt and ours:
                hand_over(run_dir, pid)
                return path
            if holder_alive(holder, path):
                raise _refusal(run_dir, holder) from None
            # stale: move it aside under a unique name first, so two processes never both delete a fresh lock
            aside = path.with_name(f".{LOCK_NAME}.{uuid.uuid4().hex[:8]}.stale")
            try:
                os.replace(path, aside)
                aside.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(_fields(pid)))
            handle.flush()
            os.fsync(handle.fileno())
        return path
    raise RunLockedError(f"could not take the lock of run {run_dir.name}; try again")


def hand_over(run_dir: str | os.PathLike, child_pid: int) -> None:
    """Write ``child_pid`` into the lock this process holds (the launcher, once it has started the trainer)."""
    from core.io.atomic import atomic_write_json

    atomic_write_json(Path(run_dir) / LOCK_NAME, _fields(child_pid))


def release(run_dir: str | os.PathLike, pid: int | None = None) -> None:
    """Remove the lock if ``pid`` (default: this process) holds it; anyone else's lock is left alone."""
    path, pid = Path(run_dir) / LOCK_NAME, pid or os.getpid()
    holder = _read(path)
    if holder and holder.get("pid") == pid and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)
