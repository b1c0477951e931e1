"""What the training process writes into its run folder: status with heartbeat, metrics, mHC snapshots."""

from __future__ import annotations

import io
import json
import os
import socket
import threading
import time
from pathlib import Path

from core.errors import UserError
from core.io.atomic import (
    _to_jsonable,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    disk_error,
    ensure_dir,
)
from core.runs.layout import HEARTBEAT_INTERVAL_S, STATES, TERMINAL_STATES
from core.runs.reader import _read_json, read_metrics


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

