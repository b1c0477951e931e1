"""Every place on disk the project reads or writes by default, and every environment variable that moves one.

    ST_RUNS_DIR      the runs folder (default <repo>/runs, outside app/ so Streamlit's watcher ignores it)
    ST_DATA_CACHE    the demo data, demo base and velocity caches (default <repo>/data/cache)
    ST_SHARED_RUN_DIR  set by rank 0 of a multi-process (DDP) run so the other ranks find its run folder
    ST_DATA_ROOTS    more folders (":"-separated) the app may read data and checkpoints from (core/data/roots.py)

Limits, each read where it is enforced: ST_CONFIG_MAX_SIZE (core/config_limits.py), ST_MEMORY_BUDGET and
ST_MEMORY_FRACTION (core/memory_budget.py), ST_UPLOADS_MAX_BYTES (core/runs/uploads.py); README "What happens
when…" lists their defaults.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNS_DIR_ENV = "ST_RUNS_DIR"
DATA_CACHE_ENV = "ST_DATA_CACHE"
SHARED_RUN_DIR_ENV = "ST_SHARED_RUN_DIR"
DATA_ROOTS_ENV = "ST_DATA_ROOTS"


def runs_root() -> Path:
    """The folder holding all runs: ``$ST_RUNS_DIR`` if set, else ``<repo>/runs``."""
    env = os.environ.get(RUNS_DIR_ENV, "").strip()
    return Path(env).expanduser().resolve() if env else REPO_ROOT / "runs"


def cache_dir() -> Path:
    """Where generated data lives: ``$ST_DATA_CACHE`` if set, else ``<repo>/data/cache``."""
    root = os.environ.get(DATA_CACHE_ENV, "").strip()
    return Path(root).expanduser() if root else REPO_ROOT / "data" / "cache"
