"""The one way this project replaces a file: write a temp file in the same folder, fsync, ``os.replace``.

A reader sees the old file or the new one, never half of one; a crash leaves at most a stray ``.*.tmp``
file (named with the writer's pid, so two writers never share one), which readers ignore. A full disk or an
unwritable folder becomes a ``RunFolderError`` saying what to do.
"""

from __future__ import annotations

import errno
import json
import os
import uuid
from pathlib import Path

from core.errors import RunFolderError, UserError
from core.paths import RUNS_DIR_ENV

_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


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
    # Unique per writer (pid and a random part), so two processes or two app sessions replacing the same file
    # never share a temp file; the target's suffix is kept last, for writers that look at it (anndata, numpy).
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")


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




def atomic_write_with(path: str | os.PathLike, write, make_parent: bool = True) -> Path:
    """Replace ``path`` by what ``write(temp_path)`` writes (``adata.write_h5ad``, ``np.savez``, ``shutil.copyfile``
    into it), atomically: for writers that want a file name rather than an open file."""
    path = Path(path)
    if make_parent:
        ensure_dir(path.parent)
    tmp = _tmp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        friendly = disk_error(err, path, "write")
        if friendly is None:
            raise
        raise friendly from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path
