"""The app's saved uploads, ``<runs>/.uploads/`` (issue 12, point 15): bounded in total size, oldest first out.

Every upload (and every copy the app writes with computed velocity) is kept by content hash so the trainer can
read it; without a bound they piled up forever. After each save the folder is cut down to
``$ST_UPLOADS_MAX_BYTES`` (default 5G; suffixes K, M, G, T), removing the oldest files first, but never the
file just saved nor one that a queued or running run reads. ``python -m core uploads clean`` does the same by
hand (``--all``: everything not in use).
"""

from __future__ import annotations

import os
from pathlib import Path

from core.memory_budget import parse_size

MAX_BYTES_ENV = "ST_UPLOADS_MAX_BYTES"
DEFAULT_MAX_BYTES = 5 * 2**30


def uploads_dir() -> Path:
    from core.paths import runs_root

    return runs_root() / ".uploads"


def max_bytes() -> int:
    text = os.environ.get(MAX_BYTES_ENV, "").strip()
    return parse_size(text, MAX_BYTES_ENV) if text else DEFAULT_MAX_BYTES


def in_use() -> set[Path]:
    """Files that queued or running runs read (their config's data.kwargs.path)."""
    from core.runs.layout import ACTIVE_STATES
    from core.runs.reader import list_runs

    used = set()
    for run in list_runs():
        path = run["config"].get("data.kwargs.path")
        if run["state"] in ACTIVE_STATES and isinstance(path, str):
            try:
                used.add(Path(path).resolve())
            except (OSError, RuntimeError):
                continue
    return used


def saved_files() -> list[Path]:
    """The saved uploads, oldest first (temp files of a save in progress are not counted)."""
    folder = uploads_dir()
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    return sorted(files, key=lambda p: (p.stat().st_mtime, p.name))


def evict(limit: int | None = None, keep: Path | None = None) -> list[Path]:
    """Remove the oldest saved uploads until they total at most ``limit`` bytes (default ``max_bytes()``);
    never ``keep`` nor a file in use. Returns the removed paths."""
    limit = max_bytes() if limit is None else limit
    protected = in_use() | ({Path(keep).resolve()} if keep is not None else set())
    files = saved_files()
    total = sum(p.stat().st_size for p in files)
    removed = []
    for path in files:
        if total <= limit:
            break
        if path.resolve() in protected:
            continue
        size = path.stat().st_size
        path.unlink(missing_ok=True)
        total -= size
        removed.append(path)
    return removed
