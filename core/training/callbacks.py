"""What a run writes while it trains: a metrics row every step, the status with progress and ETA, mHC
snapshots every K steps, and the STOP file check (cancel within one step)."""

from __future__ import annotations

import time

import lightning as L

from core.runs import RunWriter


class RunFolderCallback(L.Callback):
    def __init__(self, writer: RunWriter, snapshot_every: int):
        self.writer, self.snapshot_every = writer, snapshot_every
        self.cancelled = False
        self._t0 = self._step_start = time.perf_counter()
        self._step_times: list[float] = []

    def _snapshot(self, pl_module, step: int) -> None:
        from core.mhc import find_mhc_layers

        layers = find_mhc_layers(pl_module.model)
        if layers:
            self.writer.snapshot_mhc(step, [dict(layer.mappings(), layer_index=layer.layer_index)
                                            for layer in layers])

    def on_train_start(self, trainer, pl_module):
        self.total = int(trainer.estimated_stepping_batches)
        self.writer.write_status("running", step=trainer.global_step, total_steps=self.total,
                                 progress=trainer.global_step / max(self.total, 1))
        self._snapshot(pl_module, trainer.global_step)

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
        row = {"split": "train", "step": step, "epoch": trainer.current_epoch, **pl_module.last_metrics,
               "lr": trainer.optimizers[0].param_groups[0]["lr"], "grad_norm": float(pl_module.last_grad_norm),
               "step_time": step_time}
        self.writer.append_metrics(row)
        recent = sorted(self._step_times[-50:])
        eta = recent[len(recent) // 2] * max(self.total - step, 0)
        self.writer.heartbeat(step=step, total_steps=self.total, progress=step / max(self.total, 1), eta_s=eta)
        if step % self.snapshot_every == 0:
            self._snapshot(pl_module, step)
        if self.writer.stop_requested():
            self.cancelled = True
            trainer.should_stop = True

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
        if metrics:
            self.writer.append_metrics({"split": "val", "step": trainer.global_step, "epoch": trainer.current_epoch,
                                        **metrics})

    def on_train_end(self, trainer, pl_module):
        self._snapshot(pl_module, trainer.global_step)
