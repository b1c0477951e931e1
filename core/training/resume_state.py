"""What makes a resumed run the same run (issue 12, point 4): a checkpoint written in mid-epoch (by a
validation every ``val_freq`` steps, or by a cancel) continues exactly where it stopped.

- ``ResumableLoader``: the training DataLoader tells Lightning how many batches of the current epoch were
  processed (Lightning stores that in the checkpoint for any loader with ``state_dict``/``load_state_dict``),
  and after a restore starts the epoch at that batch. Sets are drawn by (seed, epoch, index), so skipping the
  indices is the same as having drawn them. Without it the epoch restarted at batch 0 and the resumed run
  trained other sets (38 of 40 tensors differed).
- ``RngState``: torch, numpy and Python RNG states saved with the checkpoint and restored with it.
- ``SaveOnCancel``: a cancel saves its checkpoint inside the batch loop; the trainer then makes it last.ckpt,
  over the one Lightning's ModelCheckpoint writes when training ends. Saved after ``fit`` returns, the loop
  state already counts the cancelled epoch as finished, and the resumed run skipped the rest of it (a
  680-step run cancelled at 386 ended "completed" at 675).
- ``prepare_resume``: metrics rows the resumed run will write again are dropped, and temp files left by
  killed writers are removed.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import lightning as L
import numpy as np
import torch

_TMP = re.compile(r"\..+\.(\d+)\.[0-9a-f]{8}\.tmp")


class _OffsetSampler(torch.utils.data.Sampler):
    """Indices ``start..n-1``; its length stays ``n`` so Lightning's batch counts keep their meaning."""

    def __init__(self, dataset):
        self.dataset, self.n, self.start = dataset, len(dataset), 0

    def set_epoch(self, epoch: int) -> None:
        # Lightning calls this at every epoch start, restarts included; on_train_epoch_start is skipped when
        # it restarts in mid-epoch, so without this a resumed epoch 1 drew epoch 0's sets
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __iter__(self):
        return iter(range(self.start, self.n))

    def __len__(self) -> int:
        return self.n


class ResumableLoader(torch.utils.data.DataLoader):
    def __init__(self, dataset, batch_size: int, batches_done, pin_memory: bool = False):
        """``batches_done()``: batches of the current epoch the training loop has processed."""
        self._offsets = _OffsetSampler(dataset)
        super().__init__(dataset, batch_size=batch_size, sampler=self._offsets, pin_memory=pin_memory)
        self._batches_done, self._skip = batches_done, 0

    def state_dict(self) -> dict:
        return {"batches_done": int(self._batches_done())}

    def load_state_dict(self, state: dict) -> None:
        done = int(state.get("batches_done", 0))
        self._skip = done if 0 < done < len(self) else 0  # a finished epoch resumes at the next one

    def __iter__(self):
        self._offsets.start, self._skip = self._skip * self.batch_size, 0
        return super().__iter__()


class RngState(L.Callback):
    """The global RNG states travel with every checkpoint (as tensors and ints: weights-only loadable)."""

    def state_dict(self) -> dict:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        version, py_state, py_gauss = random.getstate()
        state = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
                 "numpy_pos": int(pos), "numpy_has_gauss": int(has_gauss), "numpy_gauss": float(gauss),
                 "python": list(py_state), "python_version": int(version), "python_gauss": py_gauss}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        torch.set_rng_state(state["torch"])
        np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                             state["numpy_has_gauss"], state["numpy_gauss"]))
        random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class SaveOnCancel(L.Callback):
    """Save ``path`` in the batch loop once ``run_callback.cancelled`` is set (after its metrics row)."""

    def __init__(self, run_callback, path: Path):
        self.run_callback, self.path, self.saved = run_callback, Path(path), False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.run_callback.cancelled and not self.saved:
            trainer.save_checkpoint(self.path, weights_only=False)
            self.saved = True
            _skip_unscheduled_validation(trainer)


def _skip_unscheduled_validation(trainer) -> None:
    """Lightning validates whenever ``should_stop`` is set (for early stopping). After a cancel that adds a
    validation the uninterrupted run never had (an extra val row, possibly another best.ckpt), so it is
    skipped unless one was due at this step anyway. Private Lightning attributes: if they are gone, the extra
    validation simply happens."""
    loop, fetcher = trainer.fit_loop.epoch_loop, getattr(trainer.fit_loop, "_data_fetcher", None)
    if fetcher is None or not hasattr(loop, "_skip_next_val") or not hasattr(loop, "_should_check_val_fx"):
        return
    trainer.should_stop = False
    try:
        due = loop._should_check_val_fx(fetcher)
    finally:
        trainer.should_stop = True
    if not due:
        loop._skip_next_val = True


def prepare_resume(run_dir: Path, checkpoint: Path) -> int:
    """Before resuming from ``checkpoint``: keep the metrics rows up to its step (later ones will be logged
    again), remove temp files of writers that are gone. Returns the checkpoint's step."""
    from core.io.atomic import atomic_write_text
    from core.io.checkpoint import load_checkpoint
    from core.runs.reader import _process_alive

    step = int(load_checkpoint(checkpoint).get("global_step", 0))
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        kept = []
        for line in metrics.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True):
            try:
                row = json.loads(line)
                row_step = float(row["step"])
            except (ValueError, TypeError, KeyError):
                continue  # half-written or junk: dropped here as readers skip it anyway
            if line.endswith("\n") and row_step <= step:
                kept.append(line)
        atomic_write_text(metrics, "".join(kept))
    for folder in (run_dir, run_dir / "checkpoints", run_dir / "mhc"):
        for path in folder.glob(".*.tmp") if folder.is_dir() else []:
            match = _TMP.fullmatch(path.name)
            if match and not _process_alive(int(match.group(1)), None):
                path.unlink(missing_ok=True)
    return step
