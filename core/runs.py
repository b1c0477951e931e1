"""Run folders: where a training run keeps its config, status, metrics, snapshots and checkpoints.

The layout is the contract in the module's README section below; the trainer writes it (``RunWriter``),
the app and the CLI read it (``read_status``, ``read_metrics``, ``list_runs``), and ``launch_run`` /
``cancel_run`` start and stop a training subprocess. Everything here is plain Python: torch, numpy and
pandas are imported inside the functions that need them, so importing this module is fast.

    <runs_root>/<name>/
        config.yaml  status.json  metrics.jsonl  metrics.csv  mhc/step_0000100.npz
        checkpoints/{best,last,final}.ckpt  pert_map.json  load_report.json  split.csv  env.json
        log.txt  STOP  eval/{metrics.json,per_cell_type.csv,predictions.h5ad}

Guarantees (issue 7):
- Every file that is replaced (status, JSON, checkpoints, snapshots) is written to a temporary file in the
  same folder, fsynced, then renamed over the target with ``os.replace``. A reader sees the old file or
  the new one, never half of one; a crash leaves at most a stray ``.*.tmp`` file, which readers ignore.
- ``metrics.jsonl`` is append-only; a reader skips a half-written last line (the writer was killed).
- Run names typed by users cannot leave the runs folder; unique names come from ``os.mkdir``, which is
  atomic, so concurrent launches never share a folder.
- A run whose status says queued/running but whose process is gone, or whose heartbeat is older than
  ``HEARTBEAT_STALE_S``, reads as ``interrupted``.
- A full disk or an unwritable runs folder raises ``RunFolderError`` (a ``UserError``) saying what to do.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from core.errors import CheckpointError, ConfigError, UserError

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNS_DIR_ENV = "ST_RUNS_DIR"

# "interrupted" is recorded by a trainer stopped by SIGTERM; read_status also derives it for a dead process
STATES = ("queued", "running", "completed", "failed", "cancelled", "interrupted")
TERMINAL_STATES = ("completed", "failed", "cancelled", "interrupted")
ACTIVE_STATES = ("queued", "running")
# A run whose heartbeat is older than this reads as interrupted. The trainer beats every ~2 s, so this
# allows for a long pause (a slow validation pass, a stalled network disk) without false alarms.
HEARTBEAT_STALE_S = 60.0
HEARTBEAT_INTERVAL_S = 2.0

_NAME_MAX = 100
_NAME_OK = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


class RunFolderError(UserError):
    """The runs folder cannot be written (disk full, read-only, no permission) or a run is missing."""


# ---------------------------------------------------------------------------------------------------
# Names and folders


def runs_root() -> Path:
    """The folder holding all runs: ``$ST_RUNS_DIR`` if set, else ``<repo>/runs`` (outside ``app/``)."""
    env = os.environ.get(RUNS_DIR_ENV, "").strip()
    return Path(env).expanduser().resolve() if env else REPO_ROOT / "runs"


def safe_run_name(name: str) -> str:
    """Return ``name`` with surrounding blanks removed and inner blanks turned into ``-``; raise
    ``ConfigError`` if it could name anything but a single folder inside the runs folder."""
    if not isinstance(name, str):
        raise ConfigError(f"run name must be text; got {type(name).__name__}")
    cleaned = re.sub(r"\s+", "-", name.strip())
    if not cleaned:
        raise ConfigError("run name is empty; give a name such as 'st-lora-mhc'")
    if len(cleaned) > _NAME_MAX:
        raise ConfigError(f"run name is {len(cleaned)} characters long; use at most {_NAME_MAX}")
    if "/" in cleaned or "\\" in cleaned or os.path.isabs(cleaned) or ".." in cleaned:
        raise ConfigError(
            f"run name {name!r} contains a path ('/', '\\', '..' or an absolute path); use a plain name "
            "such as 'st-lora-mhc'"
        )
    if not _NAME_OK.fullmatch(cleaned):
        bad = sorted({c for c in cleaned if not re.fullmatch(r"[A-Za-z0-9._-]", c)})
        detail = f"characters {''.join(bad)!r}" if bad else "a leading '.', '-' or '_'"
        raise ConfigError(
            f"run name {name!r} has {detail}; use letters, digits, '.', '_' and '-', starting with a "
            "letter or digit"
        )
    return cleaned


def disk_error(err: OSError, path: Path, doing: str) -> UserError | None:
    """The ``RunFolderError`` (one actionable line) for a disk-full or permission ``OSError`` met while
    ``doing`` something to ``path``; None for any other error, which the caller re-raises."""
    if err.errno in _DISK_FULL:
        return RunFolderError(
            f"cannot {doing} {path}: the disk is full; free some space or point {RUNS_DIR_ENV} to a "
            "folder on a larger disk, then run again (files already saved are intact)"
        )
    if err.errno in _NOT_WRITABLE:
        reason = "the file system is read-only" if err.errno == errno.EROFS else "permission denied"
        return RunFolderError(
            f"cannot {doing} {path}: {reason}; make the folder writable or set {RUNS_DIR_ENV} to a "
            "writable folder"
        )
    return None


def ensure_dir(path: Path, parents: bool = True, exist_ok: bool = True) -> None:
    """``path.mkdir`` that reports a full disk or an unwritable parent as ``RunFolderError``."""
    path = Path(path)
    try:
        path.mkdir(parents=parents, exist_ok=exist_ok)
    except FileExistsError:
        raise
    except OSError as err:
        friendly = disk_error(err, path, "create the folder")
        if friendly is None:
            raise
        raise friendly from err


def new_run_dir(root: Path, name: str) -> Path:
    """Create and return ``root/name``, or ``root/name-2``, ``name-3``, ... if taken.

    ``os.mkdir`` either creates the folder or fails because it exists, atomically, so two processes
    asking for the same name at the same moment get different folders.
    """
    base = safe_run_name(name)
    root = Path(root).expanduser().resolve()
    ensure_dir(root)
    for index in range(1, 100_000):
        candidate = root / (base if index == 1 else f"{base}-{index}")
        try:
            ensure_dir(candidate, parents=False, exist_ok=False)
        except FileExistsError:
            continue
        return candidate
    raise RunFolderError(f"no free run name starting with {base!r} in {root}; choose another name")


def resolve_run(ref: str | os.PathLike, root: Path | None = None, allow_outside: bool = False) -> Path:
    """The run folder named by ``ref``: a run name inside ``root`` or, with ``allow_outside`` (the CLI,
    where the user owns the shell anyway), the path of an existing run folder anywhere."""
    root = Path(root).expanduser().resolve() if root is not None else runs_root()
    text = os.fspath(ref)
    looks_like_path = "/" in text or "\\" in text or text in (".", "..") or os.path.isabs(text)
    if looks_like_path:
        path = Path(text).expanduser().resolve()
        inside = path == root or root in path.parents
        if not inside and not allow_outside:
            raise ConfigError(f"{text!r} is outside the runs folder {root}; give the name of a run in it")
        if not path.is_dir():
            raise RunFolderError(f"no run folder at {path}; list runs with 'python -m core runs list'")
        if not any((path / f).exists() for f in ("status.json", "config.yaml")):
            raise RunFolderError(f"{path} is not a run folder (no status.json or config.yaml)")
        return path
    path = root / safe_run_name(text)
    if not path.is_dir():
        raise RunFolderError(
            f"no run named {text!r} in {root}; list runs with 'python -m core runs list'"
        )
    return path


# ---------------------------------------------------------------------------------------------------
# Atomic writes


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not every file system allows opening a folder, hence best effort.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tmp_path(path: Path) -> Path:
    # Unique per writer, so a launcher and a trainer replacing the same file never share a temp file.
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _atomic_write(path: Path, write_to) -> None:
    """Write through ``write_to(binary_file)`` into a temp file next to ``path``, fsync, then rename."""
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as handle:
            write_to(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        try:
            tmp.unlink()
        except OSError:
            pass
        friendly = disk_error(err, path, "write")
        if friendly is None:
            raise
        raise friendly from err
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    _atomic_write(Path(path), lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _to_jsonable(value):
    """``json.dumps`` default: numpy and torch scalars/arrays, paths and sets."""
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu().numpy()
    if hasattr(value, "tolist"):  # numpy array or scalar
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_to_jsonable) + "\n")


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` that never leaves a half-written checkpoint at ``path`` (temp file + rename)."""
    import torch

    def save(handle):
        try:
            torch.save(obj, handle)
        except RuntimeError as err:
            # torch's zip writer turns the OSError of a failed write (ENOSPC) into "RuntimeError ... unexpected
            # pos"; the OSError it swallowed is its context: raise that, so a full disk reads as one
            if isinstance(err.__context__, OSError):
                raise err.__context__ from None
            raise

    ensure_dir(Path(path).parent)
    _atomic_write(Path(path), save)


def atomic_checkpoint_io():
    """A Lightning ``CheckpointIO`` whose saves are atomic: ``Trainer(plugins=[atomic_checkpoint_io()])``.

    Lightning's own ``TorchCheckpointIO`` opens the target and writes into it, so a crash or a full disk
    during a save leaves a truncated ``last.ckpt``. Loading goes through ``load_checkpoint`` (weights only).
    """
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None):
            atomic_torch_save(checkpoint, path)

        def load_checkpoint(self, path, map_location=None, weights_only=None):
            return load_checkpoint(path, map_location=map_location or "cpu")

    return AtomicCheckpointIO()


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint with ``torch.load(weights_only=True)``: tensors and plain containers only, so a
    crafted file cannot run code. Raises ``CheckpointError`` (one line) for anything that is not one."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; give the path of a .ckpt file written by training")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights only" in str(err).lower() or "weights_only" in str(err).lower():
            raise CheckpointError(
                f"{path} holds Python objects other than tensors and plain values, which are not loaded "
                "for safety; use a checkpoint written by this project's training"
            ) from err
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({first}); check the file") from err
    except Exception as err:  # weights-only loading runs no code, so any failure means "not a checkpoint"
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (truncated or another kind of file); "
            "use a .ckpt file written by training"
        ) from err
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a checkpoint dictionary; use a .ckpt file written by "
            "training"
        )
    return obj


# ---------------------------------------------------------------------------------------------------
# Writing a run (inside the training process)


class RunWriter:
    """Everything the training process writes into its run folder, safely.

    ``write_status`` merges new fields into the previous status (starting from what is on disk, e.g. the
    ``queued`` status written by ``launch_run``) and stamps pid, host and heartbeat. Call ``heartbeat()``
    every step (it writes at most every ``HEARTBEAT_INTERVAL_S``), or ``start_heartbeat_thread()`` once
    so the heartbeat also beats through long steps, data loading and validation.
    """

    def __init__(self, run_dir: str | os.PathLike, heartbeat_interval: float = HEARTBEAT_INTERVAL_S):
        self.run_dir = Path(run_dir).expanduser().resolve()
        ensure_dir(self.run_dir)
        self.heartbeat_interval = float(heartbeat_interval)
        self._lock = threading.RLock()
        self._status = _read_json(self.run_dir / "status.json") or {}
        self._status.pop("stopping", None)  # a new process has not seen STOP yet
        self._last_beat = 0.0
        self._metrics_handle = None
        self._beat_thread: threading.Thread | None = None
        self._beat_stop = threading.Event()

    @property
    def status(self) -> dict:
        return dict(self._status)

    def write_status(self, state: str | None = None, **fields) -> dict:
        if state is not None and state not in STATES:
            raise ValueError(f"state must be one of {STATES}; got {state!r}")
        with self._lock:
            now = time.time()
            status = dict(self._status)
            status.update(fields)
            if state is not None:
                status["state"] = state
            status.setdefault("state", "running")
            status.update(pid=os.getpid(), host=socket.gethostname(), heartbeat=now)
            if status["state"] == "running" and not status.get("started"):
                status["started"] = now
            if status["state"] in TERMINAL_STATES:
                status.setdefault("ended", None)
                status["ended"] = status["ended"] or now
                if status["state"] == "completed":
                    status["progress"] = 1.0
                    status["eta_s"] = 0.0
            else:
                status["ended"] = None
            for key in ("step", "total_steps", "progress", "eta_s", "message", "device"):
                status.setdefault(key, None if key != "message" else "")
            atomic_write_json(self.run_dir / "status.json", status)
            self._status = status
            self._last_beat = now
            return dict(status)

    def heartbeat(self, force: bool = False, **fields) -> bool:
        """Rewrite the status with a fresh heartbeat (and any progress fields given) if the last write is
        older than the heartbeat interval. Returns whether it wrote."""
        with self._lock:
            if not force and time.time() - self._last_beat < self.heartbeat_interval:
                if fields:
                    self._status.update(fields)
                return False
            self.write_status(None, **fields)
            return True

    def start_heartbeat_thread(self) -> None:
        """Beat from a daemon thread until the status becomes final or ``close()`` is called."""
        if self._beat_thread is not None:
            return

        def beat():
            while not self._beat_stop.wait(self.heartbeat_interval):
                if self._status.get("state") in TERMINAL_STATES:
                    return
                try:
                    self.heartbeat()
                except Exception:  # a full disk must not kill training from a side thread
                    pass

        self._beat_stop.clear()
        self._beat_thread = threading.Thread(target=beat, name="run-heartbeat", daemon=True)
        self._beat_thread.start()

    def append_metrics(self, row: dict) -> None:
        """Append one JSON line to metrics.jsonl and flush it to the OS (survives the process dying)."""
        line = json.dumps(row, default=_to_jsonable) + "\n"
        with self._lock:
            try:
                if self._metrics_handle is None:
                    self._metrics_handle = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8")
                self._metrics_handle.write(line)
                self._metrics_handle.flush()
            except OSError as err:
                friendly = disk_error(err, self.run_dir / "metrics.jsonl", "append to")
                if friendly is None:
                    raise
                raise friendly from err

    def export_metrics_csv(self) -> Path:
        """Write metrics.csv (the rows of metrics.jsonl) atomically, for users of Arc State's layout."""
        frame = read_metrics(self.run_dir)
        path = self.run_dir / "metrics.csv"
        atomic_write_text(path, frame.to_csv(index=False))
        return path

    def snapshot_mhc(self, step: int, layers: list[dict]) -> Path:
        """Save every mHC layer's H_res [n,n], H_pre [n], H_post [n] at ``step`` as mhc/step_XXXXXXX.npz
        with arrays h_res [L,n,n], h_pre [L,n], h_post [L,n], layer_indices [L], step ()."""
        import numpy as np

        def host(value):
            if hasattr(value, "detach"):
                value = value.detach().float().cpu().numpy()
            return np.asarray(value, dtype=np.float32)

        if not layers:
            raise ValueError("snapshot_mhc needs at least one layer")
        arrays = {
            "h_res": np.stack([host(layer["h_res"]) for layer in layers]),
            "h_pre": np.stack([host(layer["h_pre"]).reshape(-1) for layer in layers]),
            "h_post": np.stack([host(layer["h_post"]).reshape(-1) for layer in layers]),
            "layer_indices": np.asarray([int(layer["layer_index"]) for layer in layers], dtype=np.int64),
            "step": np.asarray(int(step), dtype=np.int64),
        }
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        folder = self.run_dir / "mhc"
        ensure_dir(folder)
        path = folder / f"step_{int(step):07d}.npz"
        atomic_write_bytes(path, buffer.getvalue())
        return path

    def stop_requested(self) -> bool:
        """Whether STOP exists. The first time it is seen, the status says so (``stopping``), which tells
        ``cancel_run`` and the app that the trainer is ending by itself (saving its checkpoints)."""
        requested = (self.run_dir / "STOP").exists()
        if requested and not self._status.get("stopping"):
            try:
                self.write_status(None, stopping=time.time(), message="cancel requested: saving and stopping")
            except UserError:
                pass  # a full disk must not keep the trainer from stopping
        return requested

    def close(self) -> None:
        self._beat_stop.set()
        if self._beat_thread is not None:
            self._beat_thread.join(timeout=5)
            self._beat_thread = None
        with self._lock:
            if self._metrics_handle is not None:
                self._metrics_handle.close()
                self._metrics_handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


# ---------------------------------------------------------------------------------------------------
# Reading runs (app, CLI, evaluator)


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _process_alive(pid, heartbeat) -> bool:
    """Whether ``pid`` is a live (non-zombie) process that existed when ``heartbeat`` was written, so a
    recycled pid does not pass for our trainer."""
    import psutil

    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if isinstance(heartbeat, (int, float)) and proc.create_time() > heartbeat + 1.0:
            return False
        return True
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def read_status(run_dir: str | os.PathLike, now: float | None = None) -> dict:
    """The run's status.json, with ``state`` set to ``interrupted`` when it says queued/running but its
    process is gone or its heartbeat is older than ``HEARTBEAT_STALE_S``. The recorded state stays in
    ``recorded_state``; ``heartbeat_age_s`` says how old the heartbeat is."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFolderError(f"no run folder at {run_dir}")
    status = _read_json(run_dir / "status.json")
    if not isinstance(status, dict) or status.get("state") not in STATES:
        return {
            "state": "unknown",
            "recorded_state": None,
            "message": "no readable status.json in this run folder",
        }
    now = time.time() if now is None else now
    heartbeat = status.get("heartbeat")
    age = now - heartbeat if isinstance(heartbeat, (int, float)) else math.inf
    status["recorded_state"] = status["state"]
    status["heartbeat_age_s"] = age
    if status["state"] in ACTIVE_STATES:
        same_host = status.get("host") in (None, socket.gethostname())
        gone = same_host and not _process_alive(status.get("pid"), heartbeat)
        if gone or age > HEARTBEAT_STALE_S:
            status["state"] = "interrupted"
            why = "its process is no longer running" if gone else f"no heartbeat for {age:.0f} s"
            status["message"] = f"interrupted: {why} (last step {status.get('step')})"
    return status


def read_metrics(run_dir: str | os.PathLike):
    """metrics.jsonl as a pandas DataFrame, one row per line; a line that is not valid JSON (the last
    one, half-written when the trainer was killed) is skipped. Empty frame when there are no metrics."""
    import pandas as pd

    rows = []
    try:
        with open(Path(run_dir) / "metrics.jsonl", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if not line.endswith("\n"):
                    break  # being written right now, or cut off by a kill
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict):
                    rows.append(row)
    except FileNotFoundError:
        pass
    if not rows:
        return pd.DataFrame(columns=["split", "step", "epoch"])
    from core.metrics_clean import clean_metrics

    return clean_metrics(pd.DataFrame(rows))  # numeric steps, each (split, step) once


def _flatten(config, prefix: str = "") -> dict:
    flat = {}
    if isinstance(config, dict):
        for key, value in config.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    flat[prefix[:-1]] = config
    return flat


def read_config(run_dir: str | os.PathLike) -> dict:
    """config.yaml as a nested dict ({} if absent, unreadable, or bigger than a config can be: a run folder
    copied from elsewhere must not expand an alias bomb in every run list)."""
    import yaml

    from core.config_limits import MAX_CONFIG_FILE_BYTES, check_parsed_size

    path = Path(run_dir) / "config.yaml"
    try:
        if path.stat().st_size > MAX_CONFIG_FILE_BYTES:
            return {}
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        check_parsed_size(loaded, str(path))
    except (OSError, yaml.YAMLError, RecursionError, ConfigError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


# Config keys shown in run lists; whichever of them the config has.
SUMMARY_KEYS = (
    "model.kwargs.use_mhc",
    "model.kwargs.lora.enable",
    "model.kwargs.use_velocity_alignment",
    "model.kwargs.velocity_lambda",
    "model.init_from",
    "training.max_epochs",
    "training.max_steps",
    "training.seed",
    "seed",
)


def list_runs(root: str | os.PathLike | None = None) -> list[dict]:
    """Every run folder in ``root`` (default ``runs_root()``), newest first: name, path, status (as
    ``read_status``), config (flattened dotted keys), summary (``SUMMARY_KEYS`` present), has_eval."""
    root = Path(root) if root is not None else runs_root()
    if not root.is_dir():
        return []
    runs = []
    for path in root.iterdir():
        if not path.is_dir() or path.name.startswith("."):
            continue
        if not ((path / "status.json").exists() or (path / "config.yaml").exists()):
            continue
        status = read_status(path)
        config = _flatten(read_config(path))
        created = status.get("created") or status.get("started")
        if not isinstance(created, (int, float)):
            try:
                created = path.stat().st_mtime
            except OSError:
                created = 0.0
        runs.append(
            {
                "name": path.name,
                "path": path,
                "status": status,
                "state": status["state"],
                "created": created,
                "config": config,
                "summary": {key: config[key] for key in SUMMARY_KEYS if key in config},
                "has_eval": (path / "eval" / "metrics.json").exists(),
            }
        )
    runs.sort(key=lambda run: (run["created"], run["name"]), reverse=True)
    return runs


_SNAPSHOT = re.compile(r"step_(\d+)\.npz")


def list_mhc_snapshots(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of every mHC snapshot of the run, by step."""
    folder = Path(run_dir) / "mhc"
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _SNAPSHOT.fullmatch(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def load_mhc_snapshot(path: str | os.PathLike) -> dict:
    """A snapshot as a dict of numpy arrays (h_res, h_pre, h_post, layer_indices) and ``step`` (int)."""
    import numpy as np

    with np.load(path, allow_pickle=False) as data:
        snapshot = {key: data[key] for key in data.files}
    snapshot["step"] = int(snapshot["step"])
    return snapshot


# ---------------------------------------------------------------------------------------------------
# Launching and cancelling a training subprocess

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


def _spawn(run_dir: Path, command: list[str], status: dict) -> subprocess.Popen:
    """Write ``status`` (queued), then start ``command`` in a new session with its output appended to
    log.txt, record its pid, and watch it from a daemon thread (see ``_watch_child``)."""
    atomic_write_json(run_dir / "status.json", status)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
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


def launch_run(overrides: list[str], name: str, root: str | os.PathLike | None = None) -> Path:
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
    _spawn(run_dir, _train_command(run_dir, overrides), status)
    return run_dir


def resume_run(run_dir: str | os.PathLike, overrides: list[str] = ()) -> Path:
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
    from core import run_lock

    run_lock.acquire(run_dir)  # before anything is written: a second resume must not touch the first's files
    try:
        (run_dir / "STOP").unlink(missing_ok=True)
        raw = _read_json(run_dir / "status.json") or {}
        for stale in ("exit_code", "stopping"):
            raw.pop(stale, None)
        fields = {**raw, **_queued_fields(time.time())}
        fields["message"] = "resuming from checkpoints/last.ckpt"
        child = _spawn(run_dir, _train_command(run_dir, ["training.resume=true", *overrides], config=config), fields)
    except BaseException:
        run_lock.release(run_dir)
        raise
    run_lock.hand_over(run_dir, child.pid)  # the trainer holds it from now on (core/run_lock.py)
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
