"""A Lightning ``Logger`` that writes what the module logs (``self.log``) into the run folder's metrics.jsonl, one
row per logged step: ``split`` is ``val`` for a validation's ``val_*`` metrics and ``train`` for a step's, and
``step`` is the optimisation step (Lightning's, restored on resume). Status, progress and mHC snapshots are the
callback's (core/training/callbacks.py); the config is written by the trainer before training starts."""

from __future__ import annotations

import math

import numpy as np
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from core.runs import RunWriter


class RunFolderLogger(Logger):
    def __init__(self, writer: RunWriter):
        super().__init__()
        self.writer = writer
        self._extra: dict[str, float] = {}

    def add_to_next_row(self, metrics: dict[str, float]) -> None:
        """Values that belong to this step's row only (the mHC gradient probe, taken every few steps). Through
        ``self.log`` Lightning would repeat their last value in every later row."""
        self._extra.update(metrics)

    @property
    def name(self) -> str:
        return "run_folder"

    @property
    def version(self) -> int:
        return 0

    @property
    def save_dir(self) -> str:
        return str(self.writer.run_dir)

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        # the full resolved config is already in config.yaml; Lightning's flattened copy would only duplicate it
        return None

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        metrics = {**dict(metrics), **self._extra}
        self._extra = {}
        epoch = metrics.pop("epoch", None)
        split = "val" if any(key.startswith("val_") for key in metrics) else "train"
        row = {"split": split, "step": int(step or 0), "epoch": None if epoch is None else int(epoch)}
        row.update({key: _plain(value) for key, value in sorted(metrics.items())})
        self.writer.append_metrics(row)


def _plain(value):
    """Lightning hands every value over as float32: written as the shortest decimal that is that float32 (lr 1e-3,
    not 0.0010000000474974513), and counts (cells per step) as ints."""
    if not isinstance(value, float) or not math.isfinite(value):
        return value
    if value.is_integer() and abs(value) < 2**24:
        return int(value)
    return float(np.format_float_positional(np.float32(value), unique=True, trim="-"))
