"""Looking after run folders: tag, delete, and clone a run with changes. The app's buttons and
``python -m core runs tag|delete|clone`` make these same calls.

Tags live in ``<run>/tags.json`` (a list of short labels, written atomically). A clone is a new run launched
with every setting of the source's config.yaml as an override, then the user's changes on top, so it
trains on the same data with the same settings except those changes; it never touches the source.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from core.errors import ConfigError, RunFolderError
from core.io.atomic import atomic_write_json
from core.runs.launcher import launch_run
from core.runs.layout import ACTIVE_STATES, safe_run_name
from core.runs.reader import read_config, read_status

TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.+-]{0,39}")
# Keys that place or name a run, or continue one: never copied into a clone.
NOT_CLONED = ("run.dir", "run.name", "run.root", "training.resume")


def read_tags(run_dir: str | Path) -> list[str]:
    try:
        tags = json.loads((Path(run_dir) / "tags.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [str(t) for t in tags] if isinstance(tags, list) else []


def set_tags(run_dir: str | Path, tags: list[str]) -> list[str]:
    """Replace the run's tags (duplicates dropped, order kept); a tag is 1-40 letters, digits, spaces or
    ``_.+-``, so it shows as plain text everywhere."""
    clean: list[str] = []
    for tag in (t.strip() for t in tags):
        if not tag:
            continue
        if not TAG.fullmatch(tag):
            raise ConfigError(f"tag {tag!r} must be 1-40 letters, digits, spaces or _.+- (starting with a letter "
                              "or digit)")
        if tag not in clean:
            clean.append(tag)
    atomic_write_json(Path(run_dir) / "tags.json", clean)
    return clean


def delete_run(run_dir: str | Path) -> None:
    """Delete a finished run's folder (checkpoints, metrics, evaluation). A queued or running run is refused:
    cancel it first, so no trainer writes into a folder that is being removed."""
    run_dir = Path(run_dir)
    state = read_status(run_dir)["state"]
    if state in ACTIVE_STATES:
        raise RunFolderError(f"run {run_dir.name} is still {state}; cancel it before deleting it")
    shutil.rmtree(run_dir)


def _override_value(value) -> str:
    """A config value as the dotted-override parser reads it back (YAML scalars)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"  # quoted: 'yes', '1' or 'null' stay text
    return repr(value)


def _flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def clone_overrides(run_dir: str | Path, changes: list[str]) -> list[str]:
    """The overrides that reproduce the run's settings, then ``changes`` (``key=value``), checked by the typed
    config exactly as ``python -m core train`` will check them."""
    from core.config import load_config

    config = read_config(run_dir)
    if not config:
        raise RunFolderError(f"run {Path(run_dir).name} has no config.yaml to clone")
    overrides = [f"{k}={_override_value(v)}" for k, v in _flat(config).items()
                 if k not in NOT_CLONED and v != {}]
    overrides += [c.strip() for c in changes if c.strip()]
    load_config(overrides=overrides)
    return overrides


def clone_run(run_dir: str | Path, changes: list[str], name: str) -> Path:
    """Launch a new run named ``name`` (a number is added if taken) with the source's settings and
    ``changes``; returns its folder."""


    overrides = clone_overrides(run_dir, changes)
    run_name = safe_run_name(name)
    return launch_run(overrides + [f"run.name={run_name}"], run_name, root=Path(run_dir).parent)
