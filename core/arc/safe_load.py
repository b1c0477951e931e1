"""Reading Arc State's files without running code from them.

Arc State writes its maps with ``torch.save`` and ``var_dims.pkl`` with ``pickle.dump``; both hold ``numpy.str_``
keys (perturbation, batch and cell-type names), and some checkpoints hold ``numpy.int64`` hyper-parameters.
Plain ``torch.load(weights_only=True)`` refuses those, and Arc itself loads them with ``weights_only=False``,
a general unpickle that runs whatever a file asks for. Here exactly the pieces numpy needs to rebuild a
``numpy.str_`` or a ``numpy.int64`` are allowed (torch's safe-globals mechanism for torch files, a restricted
``pickle.Unpickler`` for plain pickles); any other global is refused with one line before it is called, and
numpy scalars of any other type are refused after loading. ``plain`` then turns what was read into str/int.
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path

import numpy as np

from core.errors import CheckpointError

ALLOWED_SCALARS = (np.str_, np.int64)
_NUMPY_GLOBALS = {
    ("numpy._core.multiarray", "scalar"): np._core.multiarray.scalar,
    ("numpy.core.multiarray", "scalar"): np._core.multiarray.scalar,  # pickles written with numpy < 2
    ("numpy", "dtype"): np.dtype,
}
# torch's own weights-only unpickler needs the dtype classes of the allowed scalars as well.
_TORCH_SAFE = [np._core.multiarray.scalar, np.dtype, type(np.dtype(np.str_)), type(np.dtype(np.int64))]


def _refused(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path} asks to run {what} while loading, which is refused for safety: Arc State files "
                           "may hold only tensors, plain values, numpy.str_ and numpy.int64")


def _what_was_refused(message: str) -> str | None:
    """The global torch's weights-only unpickler refused, from its (multi-line) message."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", message) or re.search(r"but got <class '([^']+)'>", message)
    return found.group(1) if found else None


def _check_scalars(obj, path: Path) -> None:
    """Refuse numpy scalars other than str_ and int64 (numpy's scalar() can build any dtype)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_scalars(k, path)
            _check_scalars(v, path)
    elif isinstance(obj, (list, tuple, set)):
        for v in obj:
            _check_scalars(v, path)
    elif isinstance(obj, (np.generic, np.ndarray)) and not isinstance(obj, ALLOWED_SCALARS):
        raise _refused(path, f"numpy {type(obj).__name__}")


def load_torch_file(path: str | Path, what: str = "file"):
    """``torch.load(weights_only=True)`` with numpy.str_ and numpy.int64 allowed; one-line CheckpointError else."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no {what} at {path}")
    try:
        with torch.serialization.safe_globals(_TORCH_SAFE):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = _what_was_refused(str(err))
        if found:
            raise _refused(path, found) from err
        raise CheckpointError(f"{path} is not a readable {what} ({str(err).strip().splitlines()[0][:120]})") from err
    except Exception as err:  # a weights-only load runs no code, so any failure means "not such a file"
        raise CheckpointError(f"{path} is not a readable {what} (truncated or another kind of file)") from err
    _check_scalars(obj, path)
    return obj


class _RestrictedUnpickler(pickle.Unpickler):
    """Plain pickles: numpy scalars and plain containers; tensors only through the weights-only loader."""

    def __init__(self, file, path: Path):
        super().__init__(file)
        self.path = path

    def find_class(self, module, name):
        if (module, name) in _NUMPY_GLOBALS:
            return _NUMPY_GLOBALS[(module, name)]
        if (module, name) == ("collections", "OrderedDict"):
            import collections

            return collections.OrderedDict
        if (module, name) == ("_codecs", "encode"):
            import codecs

            return codecs.encode
        if (module, name) in (("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")):
            import torch._utils

            return getattr(torch._utils, name)
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            # a tensor pickled with plain pickle is a torch file inside; read that one weights-only too
            return lambda data: _torch_bytes(data, self.path)
        raise _refused(self.path, f"{module}.{name}")


def _torch_bytes(data: bytes, path: Path):
    import torch

    try:
        with torch.serialization.safe_globals(_TORCH_SAFE):
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise _refused(path, _what_was_refused(str(err)) or "an unknown object") from err


def load_pickle_file(path: str | Path, what: str = "file"):
    """A plain pickle (var_dims.pkl, legacy *.pkl maps) read with a restricted unpickler."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no {what} at {path}")
    try:
        with path.open("rb") as fh:
            obj = _RestrictedUnpickler(fh, path).load()
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(f"{path} is not a readable {what} (truncated or another kind of file)") from err
    _check_scalars(obj, path)
    return obj


def plain(obj):
    """numpy.str_ -> str and numpy.int64 -> int, through dicts, lists and tuples (tensors untouched)."""
    if isinstance(obj, dict):
        return {plain(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj)
    if isinstance(obj, np.str_):
        return str(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
