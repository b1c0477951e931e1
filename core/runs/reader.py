"""Reading run folders (app, CLI, evaluator): a run whose status says queued/running but whose process is gone,
or whose heartbeat is older than ``HEARTBEAT_STALE_S``, reads as ``interrupted``; a half-written last line of
metrics.jsonl (the writer was killed) is skipped."""

from __future__ import annotations

import json
import math
import os
import re
import socket
import time
from pathlib import Path

from core.errors import ConfigError, RunFolderError
from core.paths import runs_root
from core.runs.layout import ACTIVE_STATES, HEARTBEAT_STALE_S, STATES


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
    from core.runs.metrics_clean import clean_metrics

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

