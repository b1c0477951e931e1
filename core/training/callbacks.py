"""What a run writes while it trains (rank 0 only): a metrics row every step and after every validation, the
status with progress and ETA, mHC snapshots every K steps, and the STOP file check (cancel within one step)."""

from __future__ import annotations

import time

import lightning as L

from core.runs import RunWriter


class RunFolderCallback(L.Callback):
    def __init__(self, writer: RunWriter, snapshot_every: int):
        self.writer, self.snapshot_every = writer, snapshot_every
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
        if trainer.is_global_zero:
            row = {"split": "train", "step": step, "epoch": trainer.current_epoch, **pl_module.last_metrics,
                   "lr": trainer.optimizers[0].param_groups[0]["lr"], "grad_norm": pl_module.last_grad_norm,
                   "step_time": step_time}
            self.writer.append_metrics(row)
            recent = sorted(self._step_times[-50:])
            eta = recent[len(recent) // 2] * max(self.total - step, 0)
            self.writer.heartbeat(step=step, total_steps=self.total, progress=min(step / max(self.total, 1), 1.0),
                                  eta_s=eta)
        if step % self.snapshot_every == 0:
            self._snapshot(trainer, pl_module)
        self._check_stop(trainer)

    def on_validation_end(self, trainer, pl_module):
        # also after the sanity pass before training: a step-0 row, the starting point (e.g. the base model)
        if not trainer.sanity_checking:
            self.last_val_step = trainer.global_step
        if trainer.is_global_zero and pl_module.val_summary:
            self.writer.append_metrics({"split": "val", "step": trainer.global_step, "epoch": trainer.current_epoch,
                                        **pl_module.val_summary})

    def on_train_end(self, trainer, pl_module):
        self._snapshot(trainer, pl_module)
