"""What a run writes while it trains besides its metrics (those go through core/training/logger.py): the status
with progress and ETA (rank 0), mHC snapshots every K steps, and the STOP file check (cancel within one step)."""

from __future__ import annotations

import time

import lightning as L

from core.runs import RunWriter


class RunFolderCallback(L.Callback):
    def __init__(self, writer: RunWriter, snapshot_every: int, on_progress=None):
        """``on_progress(event)``: also told each step's progress (the terminal or notebook bar, core/progress.py);
        the event {step, total, eta_s, loss} is what the status file tells the app."""
        self.writer, self.snapshot_every, self.on_progress = writer, snapshot_every, on_progress
        self.cancelled = False
        self.total = 0
        self._step_start = time.perf_counter()
        self._step_times: list[float] = []
        self._last_snapshot: int | None = None
        self.last_val_step: int | None = None  # of the last validation during training (not the sanity pass)

    def _snapshot(self, trainer, pl_module) -> None:
        from core.mhc.layer import find_mhc_layers

        step = trainer.global_step
        layers = find_mhc_layers(pl_module.model)
        if layers and trainer.is_global_zero and step != self._last_snapshot:
            self.writer.snapshot_mhc(step, [dict(layer.mappings(), layer_index=layer.layer_index)
                                            for layer in layers])
            self._last_snapshot = step

    def _check_stop(self, trainer) -> None:
        if self.writer.stop_requested():
            self.cancelled = True
            trainer.should_stop = True

    def on_train_start(self, trainer, pl_module):
        self.total = int(trainer.estimated_stepping_batches)
        if trainer.is_global_zero:
            self.writer.write_status("running", step=trainer.global_step, total_steps=self.total,
                                     progress=trainer.global_step / max(self.total, 1), message="training")
        self._snapshot(trainer, pl_module)
        self._check_stop(trainer)

    def on_train_epoch_start(self, trainer, pl_module):
        loader = trainer.train_dataloader
        if loader is not None and hasattr(loader.dataset, "set_epoch"):
            loader.dataset.set_epoch(trainer.current_epoch)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._step_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        step_time = time.perf_counter() - self._step_start
        self._step_times.append(step_time)
        if trainer.logger is not None and getattr(pl_module, "step_metrics", None):
            # "step" names the row by optimisation steps done (the 1-based count after this step)
            trainer.logger.log_metrics({**pl_module.step_metrics, "step_time": step_time}, step=step)
            pl_module.step_metrics = {}
        if trainer.is_global_zero:
            recent = sorted(self._step_times[-50:])
            eta = recent[len(recent) // 2] * max(self.total - step, 0)
            self.writer.heartbeat(step=step, total_steps=self.total, progress=min(step / max(self.total, 1), 1.0),
                                  eta_s=eta)
            if self.on_progress is not None:
                loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
                self.on_progress({"step": step, "total": self.total, "eta_s": eta,
                                  "loss": None if loss is None else float(loss)})
        if step % self.snapshot_every == 0:
            self._snapshot(trainer, pl_module)
        self._check_stop(trainer)

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.last_val_step = trainer.global_step

    def on_train_end(self, trainer, pl_module):
        self._snapshot(trainer, pl_module)
