"""Starting ``python -m core experiment`` in the background (the app's Compare page) and reading back the
experiments of a runs folder.

The experiment runs as its own process in its own session, with its output in
``<runs root>/experiments/<name>/log.txt``, so it survives a browser reload and the app stays responsive;
``launch.json`` beside it records the command and pid. What it writes (``results.json``) is what the CLI
writes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from core.experiment.runner import EXPERIMENTS_FOLDER, experiment_dir
from core.runs import REPO_ROOT, atomic_write_json, ensure_dir, runs_root

_CHILDREN: dict[Path, subprocess.Popen] = {}


def experiment_command(arms: str, seeds: int, name: str, overrides: list[str], demo_base: bool = True,
                       jobs: int | None = None) -> list[str]:
    command = [sys.executable, "-m", "core", "experiment", "--arms", arms, "--seeds", str(int(seeds)),
               "--name", name]
    if not demo_base:
        command.append("--no-demo-base")
    if jobs:
        command += ["--jobs", str(int(jobs))]
    return [*command, *overrides]


def launch_experiment(arms: str, seeds: int, name: str, overrides: list[str], demo_base: bool = True,
                      root: Path | None = None, jobs: int | None = None) -> Path:
    """Start the experiment in the background; returns its folder (log.txt there follows its progress)."""
    root = Path(root) if root is not None else runs_root()
    folder = experiment_dir(name, root)
    ensure_dir(folder)
    command = experiment_command(arms, seeds, name, overrides, demo_base, jobs)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["ST_RUNS_DIR"] = str(root)
    with open(folder / "log.txt", "ab") as log:
        log.write(f"$ {' '.join(command)}\n".encode())
        log.flush()
        child = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    _CHILDREN[folder] = child
    atomic_write_json(folder / "launch.json", {"command": command, "pid": child.pid, "started": time.time()})
    return folder


def experiment_state(folder: Path) -> str:
    """running (launched from this process and not ended) | finished (results.json newer than the last
    launch) | failed (ended without results) | unknown (launched elsewhere, no results yet)."""
    folder = Path(folder)
    child = _CHILDREN.get(folder)
    if child is not None and child.poll() is None:
        return "running"
    results = folder / "results.json"
    try:
        started = json.loads((folder / "launch.json").read_text(encoding="utf-8")).get("started", 0.0)
    except (OSError, ValueError):
        started = 0.0
    if results.is_file() and results.stat().st_mtime >= started:
        return "finished"
    if child is not None:
        return "failed"
    return "unknown"


def list_experiments(root: Path | None = None) -> list[Path]:
    """Experiment folders of the runs folder, newest first."""
    folder = (Path(root) if root is not None else runs_root()) / EXPERIMENTS_FOLDER
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def log_tail(folder: Path, lines: int = 8) -> str:
    try:
        text = (Path(folder) / "log.txt").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])
