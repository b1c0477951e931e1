"""Which folders the app may read input files from (issue 12, points 1 and 14).

A path typed into the app (a server-side .h5ad, a base checkpoint, ``data.kwargs.path`` or
``model.init_from`` in "More settings") is an untrusted string: it is resolved, symlinks included, and must
then lie under one of the data roots: the project's ``data/`` folder, the runs folder, the user's home, and
every folder in ``$ST_DATA_ROOTS`` (separated by ``os.pathsep``). Errors name only what the user typed,
never a resolved target, so a symlink to ``/etc/shadow`` does not reveal where it points or whether it exists.

The CLI does not go through this: the person at the command line already chose the file.
Also here: the config keys that choose where a run writes, which form text may never set.
"""

from __future__ import annotations

import os
from pathlib import Path

from core.errors import ConfigError, DataError
from core.paths import DATA_ROOTS_ENV, REPO_ROOT

# Keys that choose where files are written: set by the app itself, refused in form text.
WRITE_LOCATION_KEYS = ("run.dir", "run.root")
# Keys that name files read by a run: allowed from the app only under the data roots.
READ_PATH_KEYS = ("data.kwargs.path", "model.init_from")


def data_roots() -> list[Path]:
    from core.paths import runs_root

    roots = [REPO_ROOT / "data", runs_root(), Path.home()]
    extra = os.environ.get(DATA_ROOTS_ENV, "")
    roots += [Path(p).expanduser() for p in extra.split(os.pathsep) if p.strip()]
    resolved = []
    for root in roots:
        try:
            resolved.append(root.resolve())
        except (OSError, RuntimeError):  # a root that loops or cannot be read is simply not a root
            continue
    return resolved


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def checked_input_path(text: str, what: str = "file", suffixes: tuple[str, ...] = ()) -> Path:
    """The resolved path of ``text`` if it lies under a data root and is a file (with one of ``suffixes``
    when given); else ``DataError`` naming only ``text``. The root check comes first, so nothing is said
    about whether a file outside the roots exists."""
    text = str(text).strip()
    if not text:
        raise DataError(f"give the path of the {what}")
    try:
        resolved = Path(text).expanduser().resolve()
    except (OSError, RuntimeError):
        raise DataError(f"the {what} path {text!r} cannot be resolved (a symlink loop?)") from None
    if not any(_inside(resolved, root) for root in data_roots()):
        raise DataError(
            f"the {what} path {text!r} is outside the folders the app may read (the project's data folder, "
            f"the runs folder, your home); add its folder to {DATA_ROOTS_ENV} to allow it")
    if suffixes and resolved.suffix not in suffixes and Path(text).suffix not in suffixes:
        raise DataError(f"{text!r} is not a {' or '.join(suffixes)} file; give the path of one")
    if not resolved.is_file():
        raise DataError(f"no file at {text!r} (the {what}); check the path (it is read on the server, not your "
                        "computer)")
    return resolved


def check_app_config(cfg) -> None:
    """Refuse a config built from app form text that chooses where files go, or reads outside the roots.

    Checked on the resolved config, not on the text, so every spelling (``run.dir=``, ``run={dir: ...}``,
    an alias) is caught. ``launch_run`` adds the app's own ``run.dir`` after this check."""
    for key in WRITE_LOCATION_KEYS:
        section, name = key.split(".")
        if getattr(getattr(cfg, section), name) is not None:
            raise ConfigError(f"{key} cannot be set from the app (runs are always written to the runs folder); "
                              f"remove it from 'More settings'")
    if cfg.data.kwargs.path is not None:
        checked_input_path(cfg.data.kwargs.path, "data file", (".h5ad",))
    if cfg.model.init_from not in (None, "demo"):
        checked_input_path(cfg.model.init_from, "base checkpoint", (".ckpt", ".pt", ".pth"))
