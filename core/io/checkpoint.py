"""Checkpoints: saved atomically (also from inside Lightning), loaded with ``weights_only=True`` so a crafted
file cannot run code; anything that is not a checkpoint dictionary is a one-line ``CheckpointError``."""

from __future__ import annotations

import os
from pathlib import Path

from core.errors import CheckpointError
from core.io.atomic import _atomic_write, ensure_dir


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` that never leaves a half-written checkpoint at ``path`` (temp file + rename)."""
    import torch

    ensure_dir(Path(path).parent)
    def save(handle):
        try:
            torch.save(obj, handle)
        except RuntimeError as err:
            # torch's zip writer turns the OSError of a failed write (ENOSPC) into "RuntimeError ... unexpected
            # pos"; the OSError it swallowed is its context: raise that, so a full disk reads as one
            if isinstance(err.__context__, OSError):
                raise err.__context__ from None
            raise

    _atomic_write(Path(path), save)


def atomic_checkpoint_io():
    """A Lightning ``CheckpointIO`` whose saves are atomic: ``Trainer(plugins=[atomic_checkpoint_io()])``.

    Lightning's own ``TorchCheckpointIO`` opens the target and writes into it, so a crash or a full disk
    during a save leaves a truncated ``last.ckpt``. Loading goes through ``load_checkpoint`` (weights only).
    """
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None):
            atomic_torch_save(checkpoint, path)

        def load_checkpoint(self, path, map_location=None, weights_only=None):
            return load_checkpoint(path, map_location=map_location or "cpu")

    return AtomicCheckpointIO()


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint with ``torch.load(weights_only=True)``: tensors and plain containers only, so a
    crafted file cannot run code. Raises ``CheckpointError`` (one line) for anything that is not one."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; give the path of a .ckpt file written by training")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights only" in str(err).lower() or "weights_only" in str(err).lower():
            raise CheckpointError(
                f"{path} holds Python objects other than tensors and plain values, which are not loaded "
                "for safety; use a checkpoint written by this project's training"
            ) from err
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({first}); check the file") from err
    except Exception as err:  # weights-only loading runs no code, so any failure means "not a checkpoint"
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (truncated or another kind of file); "
            "use a .ckpt file written by training"
        ) from err
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a checkpoint dictionary; use a .ckpt file written by "
            "training"
        )
    return obj

