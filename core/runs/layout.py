"""Run states and names: a run name typed by a user can only ever name one folder inside the runs folder, and
unique names come from ``os.mkdir``, which is atomic, so concurrent launches never share a folder."""

from __future__ import annotations

import os
import re
from pathlib import Path

from core.errors import ConfigError, RunFolderError
from core.io.atomic import ensure_dir
from core.paths import runs_root

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

