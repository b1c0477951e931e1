"""``train(cfg)``: one complete run, from a config to a finished run folder (the layout in core/runs/__init__.py).

The Trainer picks the device (CUDA, then Apple MPS, then CPU, unless training.accelerator says otherwise), uses
bf16 mixed precision on CUDA, clips gradients, and passes devices/strategy through for DDP (several GPUs, or
several CPU processes: tests/integration/test_ddp.py). Under DDP Lightning re-runs this command once per extra
device; those processes find the run folder through ``ST_SHARED_RUN_DIR`` and only rank 0 writes to it.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import os
import platform
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from core.config import Config, save_config
from core.errors import UserError
from core.io.atomic import atomic_write_json
from core.io.checkpoint import atomic_checkpoint_io
from core.paths import SHARED_RUN_DIR_ENV, runs_root
from core.progress import ProgressBar
from core.runs import RunWriter, new_run_dir
from core.runs import lock as run_lock
from core.training.devices import default_precision, device_choice, is_rank_zero, lightning_devices, world_size
from core.training.prepare import prepare_data

log = logging.getLogger("core.training")


def _cpu_threads(cfg: Config) -> int:
    """training.num_threads, or half of torch's default when the run trains on the CPU (see config.py: two
    threads on a busy 2-core machine spin against other processes and ran 10x slower than one)."""

    if cfg.training.num_threads:
        return cfg.training.num_threads
    default = _torch_default_threads()
    if device_choice(cfg.training.accelerator)[1] == "cpu":
        return max(1, default // 2)
    return default


@functools.cache  # read once, before any run in this process changed it (a nested run, the demo base)
def _torch_default_threads() -> int:
    import torch

    return torch.get_num_threads()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parents[2],
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment(device: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import torch

    packages = {}
    for name in ("torch", "lightning", "transformers", "peft", "geomloss", "anndata", "numpy", "scanpy", "scvelo"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    return {"python": platform.python_version(), "platform": platform.platform(), **packages,
            "device": device, "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
            "gpu_count": torch.cuda.device_count(), "torch_threads": torch.get_num_threads(),
            "git_commit": _git_commit(), "argv": sys.argv}


def prepare_run_dir(cfg: Config) -> Path:
    if not cfg.run.dir and os.environ.get(SHARED_RUN_DIR_ENV) and not is_rank_zero():
        cfg.run.dir = os.environ[SHARED_RUN_DIR_ENV]
    if cfg.run.dir:
        run_dir = Path(cfg.run.dir).expanduser().resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir
    root = Path(cfg.run.root).expanduser() if cfg.run.root else runs_root()
    return new_run_dir(root, cfg.run.name)


class _QuietWriter:
    """What non-zero DDP ranks get instead of a RunWriter: they read STOP but write nothing."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def stop_requested(self) -> bool:
        return (self.run_dir / "STOP").exists()

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def _log_handlers(run_dir: Path) -> list[logging.Handler]:
    """Progress goes to stdout (stderr is kept for the one-line error of a failed run), and to log.txt unless
    stdout already is log.txt (a run launched by core.runs.launch_run)."""
    log_path = run_dir / "log.txt"
    # a run started inside another (the demo base) logs through the outer run's handlers as well
    nested = any(type(h) is logging.StreamHandler for h in log.handlers)
    handlers: list[logging.Handler] = [] if nested else [logging.StreamHandler(sys.stdout)]
    try:
        same = log_path.exists() and os.path.samestat(os.fstat(sys.stdout.fileno()), os.stat(log_path))
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        same = False
    if not same:
        handlers.append(logging.FileHandler(log_path))
    for handler in handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    return handlers


def resolve_defaults(cfg: Config) -> Config:
    """Fill the settings left to the trainer with what it will use, in place, so that config.yaml says what
    ran: a CLI run with training.max_epochs unset and an app run with max_epochs=5 are the same settings
    (Compare groups them as seeds)."""
    t = cfg.training
    if t.max_epochs is None and t.max_steps <= 0:
        t.max_epochs = 5
    return cfg


def train(cfg: Config, callbacks: list | None = None, progress: bool | None = None) -> Path:
    """Run training as configured; returns the run folder. A failure ends with status 'failed' and the error in
    plain words in status.json, then is raised again (UserErrors reach the CLI as one line). ``callbacks``: extra
    Lightning callbacks (run after the run-folder callback). ``progress``: a progress bar (steps, loss, ETA) on the
    terminal or in the notebook; by default shown when there is one to show it on (core/progress.py)."""
    run_dir = prepare_run_dir(cfg)
    rank_zero = is_rank_zero()
    if rank_zero:  # one trainer per folder; refused before anything is written (core/runs/lock.py)
        run_lock.acquire(run_dir, adopt=True)
    try:
        return _train_locked(cfg, run_dir, rank_zero, callbacks, progress)
    finally:
        if rank_zero:
            run_lock.release(run_dir)


def _train_locked(cfg: Config, run_dir: Path, rank_zero: bool, callbacks: list | None,
                  progress: bool | None) -> Path:
    writer = RunWriter(run_dir) if rank_zero else _QuietWriter(run_dir)
    handlers = _log_handlers(run_dir) if rank_zero else []
    for handler in handlers:
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    writer.write_status("running", step=0, message="preparing data", config_name=cfg.run.name)
    resolve_defaults(cfg)
    if rank_zero:  # written now so that a run failing while it prepares data still shows its settings
        save_config(cfg, run_dir / "config.yaml")
    writer.start_heartbeat_thread()
    import torch

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(_cpu_threads(cfg))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            # under DDP: the validation means are already summed over the ranks (STModule.on_validation_epoch_end)
            warnings.filterwarnings("ignore", message=".*sync_dist=True.*when logging on epoch level.*")
            return _train(cfg, run_dir, writer, list(callbacks or []), progress if rank_zero else False)
    except Exception as err:
        message = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
        writer.write_status("failed", message=message)
        log.error("failed: %s", message)
        raise
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or SIGTERM (Lightning turns it into SystemExit)
        if writer.stop_requested() or not isinstance(sys.exc_info()[1], SystemExit):
            writer.write_status("cancelled", message="cancelled: the training process was interrupted")
        else:
            # a bare SIGTERM (a scheduler, a shutdown) is no failure of the run: it can be resumed
            writer.write_status("interrupted", message="interrupted: the training process received SIGTERM; "
                                f"resume it with 'python -m core runs resume {run_dir.name}'")
        raise
    finally:
        torch.set_num_threads(threads)  # an in-process caller (tests, notebooks) gets its setting back
        writer.close()
        for handler in handlers:
            log.removeHandler(handler)
            handler.close()


def _train(cfg: Config, run_dir: Path, writer, extra_callbacks: list, progress: bool | None) -> Path:
    """The run's phases in order: data, model, run records, trainer, fit, checkpoints and summary. Each phase
    may be cancelled through STOP before the next starts."""
    import lightning as L

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    L.seed_everything(cfg.training.seed, workers=True, verbose=False)

    def phase(text):
        writer.write_status("running", message=f"preparing data: {text}")

    data, mapping, data_notes = prepare_data(cfg, run_dir, phase)
    for note in data_notes:
        log.info(note)
    if _stopped_early(writer, "preparing data"):
        return run_dir
    accelerator, device = device_choice(cfg.training.accelerator)
    module = _build_module(cfg, run_dir, writer, data, mapping, data_notes, device)
    if _stopped_early(writer, "building the model"):
        return run_dir
    fit = _Fit.configure(cfg, run_dir, writer, data, accelerator, device, extra_callbacks, progress)
    writer.write_status("running", device=device, total_steps=fit.total, message="starting")
    log.info("training on %s (%s): %d sets of %d cells per epoch, batch %d, %s steps", device, fit.precision,
             len(data.train_sets), cfg.model.kwargs.cell_set_len, cfg.training.batch_size, fit.total)
    started = time.time()
    with fit.bar, _compile_errors(cfg):
        fit.trainer.fit(module, datamodule=data, ckpt_path=fit.resume)
    return _finish(fit, module, data, run_dir, writer, device, time.time() - started)


def _compile_errors(cfg: Config):
    if not cfg.training.compile:
        return contextlib.nullcontext()
    from core.training.compile import eager_on_compile_errors

    return eager_on_compile_errors()


def _build_module(cfg: Config, run_dir: Path, writer, data, mapping, data_notes: list[str], device: str):
    """Base (the demo base may be pretrained here, once), then the model with LoRA/mHC, then the run's records of
    what was loaded; returns the Lightning module."""
    import torch

    from core.arc.finetune import build_for_training_any as build_for_training
    from core.training.demo_base import resolve_base
    from core.training.module import STModule

    building = "building the model"
    if cfg.model.init_from == "demo":
        from core.training.demo_base import demo_base_path

        if not demo_base_path().exists():
            building += ": pretraining the demo base on the demo atlas (once, about half a minute)"
    writer.write_status("running", message=building)
    base_path = resolve_base(cfg.model.init_from, train)  # may pretrain the demo base: before seeding, not after
    torch.manual_seed(cfg.training.seed)  # the model's initial weights do not depend on how much data prep drew
    model, load_report, notes = build_for_training(cfg, data.table.z.shape[1], data.pert_map, mapping.control_pert,
                                                   data.batch_map, base_path=base_path, embedding=data.embedding)
    if getattr(model, "gene_decoder", None) is not None and cfg.model.kwargs.decoder_weight > 0:
        data.use_genes()
        notes.append(f"gene decoder trained with Arc's decoder loss (weight {cfg.model.kwargs.decoder_weight}) against "
                     f"obsm['X_hvg'] ({data.gene_dim} genes)")
    if cfg.training.compile:
        from core.training.compile import compile_model

        notes.append(compile_model(model, device))
    for note in notes:
        log.info("model: %s", note)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    log.info("model: %d of %d parameters trainable", n_train, n_all)
    if is_rank_zero():
        save_config(cfg, run_dir / "config.yaml")
        atomic_write_json(run_dir / "pert_map.json", {"map": data.pert_map, "control": mapping.control_pert,
                                                      "rebuilt": load_report.get("new_perturbations", []),
                                                      "batch_map": data.batch_map})
        atomic_write_json(run_dir / "load_report.json", {**load_report, "notes": notes, "data_notes": data_notes,
                                                         "trainable_parameters": n_train, "parameters": n_all})
        atomic_write_json(run_dir / "env.json", environment(device))
        atomic_write_json(run_dir / "embedding.json", data.embedding)  # read by base_embedding without torch
    hparams = {"config": cfg.to_dict(), "pert_map": data.pert_map, "control": mapping.control_pert,
               "embed_dim": int(data.table.z.shape[1]), "batch_map": data.batch_map,
               "lora_applied": bool(cfg.model.init_from) and cfg.model.kwargs.lora.enable,
               "embedding": data.embedding, **getattr(model, "checkpoint_hparams", {})}  # an Arc model's architecture
    return STModule(model, hparams)


@dataclass
class _Fit:
    """The Lightning trainer of one run and the callbacks the end of the run reads back."""

    trainer: object
    callback: object  # RunFolderCallback: the run folder's metrics, STOP, mHC snapshots
    checkpoint: object  # ModelCheckpoint of best.ckpt by val_loss
    cancel_saver: object  # SaveOnCancel: the in-loop checkpoint of a cancelled run
    bar: ProgressBar
    total: int | float  # steps the run will take
    precision: str
    resume: Path | None
    ckpt_dir: Path

    @classmethod
    def configure(cls, cfg: Config, run_dir: Path, writer, data, accelerator: str, device: str,
                  extra_callbacks: list, progress: bool | None) -> _Fit:
        import lightning as L
        from lightning.pytorch.callbacks import ModelCheckpoint

        from core.training.callbacks import RunFolderCallback
        from core.training.logger import RunFolderLogger
        from core.training.resume_state import RngState, SaveOnCancel, prepare_resume

        t = cfg.training
        max_epochs = t.max_epochs if t.max_epochs is not None else (-1 if t.max_steps > 0 else 5)
        devices = lightning_devices(t.devices, accelerator)
        steps_per_epoch = math.ceil(len(data.train_sets) / (t.batch_size * world_size(devices, t.strategy)))
        total = min(t.max_steps if t.max_steps > 0 else math.inf,
                    max_epochs * steps_per_epoch if max_epochs > 0 else math.inf)
        val_every = min(t.val_freq, total) if t.val_freq else None
        bar = ProgressBar(total, f"training {run_dir.name}", enabled=progress)
        callback = RunFolderCallback(writer, t.mhc_snapshot_every,
                                     on_progress=_bar_listener(bar) if bar.shown else None)
        ckpt_dir = run_dir / "checkpoints"
        checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val_loss", mode="min",
                                     save_last=True, save_top_k=1, auto_insert_metric_name=False,
                                     enable_version_counter=False, save_on_train_epoch_end=False)
        precision = default_precision(device, t.precision)
        resume = ckpt_dir / "last.ckpt" if t.resume and (ckpt_dir / "last.ckpt").exists() else None
        if resume is not None and is_rank_zero():
            prepare_resume(run_dir, resume)  # metrics after the checkpoint's step dropped, orphan temp files removed
        cancel_saver = SaveOnCancel(callback, ckpt_dir / "cancel.ckpt")
        trainer = L.Trainer(
            accelerator=accelerator, devices=devices, strategy=t.strategy, precision=precision,
            max_epochs=max_epochs, max_steps=t.max_steps,
            val_check_interval=val_every, check_val_every_n_epoch=None if val_every else 1,
            callbacks=[callback, cancel_saver, RngState(), *extra_callbacks, checkpoint],
            plugins=[atomic_checkpoint_io()], logger=RunFolderLogger(writer), log_every_n_steps=1,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0 if resume else -1,
            default_root_dir=run_dir, deterministic=False, gradient_clip_val=t.grad_clip or None,
        )
        if trainer.world_size > 1:
            os.environ[SHARED_RUN_DIR_ENV] = str(run_dir)
        return cls(trainer, callback, checkpoint, cancel_saver, bar, total, precision, resume, ckpt_dir)


def _finish(fit: _Fit, module, data, run_dir: Path, writer, device: str, seconds: float) -> Path:
    """After fit: the end state validated, final/last checkpoints, the summary and the run's last status."""
    from core.training.finite_check import check_finite_result

    trainer, callback, ckpt_dir = fit.trainer, fit.callback, fit.ckpt_dir
    if not callback.cancelled and trainer.global_step > 0 and callback.last_val_step != trainer.global_step:
        _final_validation(trainer, module, data, fit.checkpoint, ckpt_dir)
    check_finite_result(module, module.val_summary.get("val_loss"), trainer.global_step)  # else: failed
    trainer.save_checkpoint(ckpt_dir / "final.ckpt", weights_only=False)
    if fit.cancel_saver.saved:  # saved inside the loop, where a resume must continue; replaces any later last.ckpt
        os.replace(ckpt_dir / "cancel.ckpt", ckpt_dir / "last.ckpt")
    else:
        trainer.save_checkpoint(ckpt_dir / "last.ckpt", weights_only=False)  # where a resumed run continues
    state = "cancelled" if callback.cancelled else "completed"
    if is_rank_zero():
        writer.export_metrics_csv()
        best = fit.checkpoint.best_model_score
        atomic_write_json(run_dir / "train_summary.json", {
            "state": state, "steps": trainer.global_step, "epochs": trainer.current_epoch, "seconds": round(seconds, 2),
            "best_val_loss": None if best is None else float(best), "device": device, "precision": fit.precision})
    writer.write_status(state, step=trainer.global_step, message="cancelled by request" if callback.cancelled else "")
    log.info("%s after %d steps in %.1f s; run folder %s", state, trainer.global_step, seconds, run_dir)
    return run_dir


def _bar_listener(bar):
    def update(event: dict) -> None:
        fields = {"eta": f"{event['eta_s']:.0f} s"}
        if event["loss"] is not None:
            fields["loss"] = event["loss"]
        bar.update(event["step"], event["total"], **fields)

    return update


def _stopped_early(writer, phase: str) -> bool:
    """STOP seen before training started (data preparation or the demo base can take a while)."""
    if not writer.stop_requested():
        return False
    writer.write_status("cancelled", message=f"cancelled while {phase}, before training")
    log.info("cancelled while %s, before training", phase)
    return True


def _final_validation(trainer, module, data, checkpoint, ckpt_dir: Path) -> None:
    """Validate the end state when the last scheduled validation came earlier (a run ended by max_steps in
    mid-epoch), and keep it as best.ckpt if it is the best."""
    trainer.validate(module, datamodule=data, verbose=False)
    value = module.val_summary.get("val_loss")
    best = checkpoint.best_model_score
    if value is not None and (best is None or value < float(best)):
        trainer.save_checkpoint(ckpt_dir / "best.ckpt", weights_only=False)
        import torch

        checkpoint.best_model_score = torch.tensor(value)
        checkpoint.best_model_path = str(ckpt_dir / "best.ckpt")
