"""``train(cfg)``: one complete run, from a config to a finished run folder (the contract in CONTRACT_RUNS.md).

The Trainer picks the device (CUDA, then Apple MPS, then CPU, unless training.accelerator says otherwise), uses
bf16 mixed precision on CUDA, clips gradients, and passes devices/strategy through for multi-GPU DDP. Under DDP
Lightning re-runs this command once per extra GPU; those processes find the run folder through
``ST_SHARED_RUN_DIR`` and only rank 0 writes to it.
"""

from __future__ import annotations

import io
import logging
import math
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

from core.config import Config, save_config
from core.errors import UserError
from core.runs import RunWriter, atomic_checkpoint_io, atomic_write_json, atomic_write_text, new_run_dir, runs_root

log = logging.getLogger("core.training")
SHARED_RUN_DIR_ENV = "ST_SHARED_RUN_DIR"
_DEFAULT_THREADS: int | None = None


def device_choice(accelerator: str) -> tuple[str, str]:
    """(Lightning accelerator, device name) for training.accelerator: auto takes CUDA, then MPS, then CPU."""
    import torch

    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if accelerator in ("gpu", "cuda"):
        if not cuda:
            raise UserError("training.accelerator=gpu but no CUDA GPU is visible; use auto or cpu, or install the "
                            "CUDA build of torch (README, 'GPU')")
        return "gpu", "cuda"
    if accelerator == "mps":
        if not mps:
            raise UserError("training.accelerator=mps but Apple MPS is not available; use auto or cpu")
        return "mps", "mps"
    if accelerator == "auto" and cuda:
        return "gpu", "cuda"
    if accelerator == "auto" and mps:
        return "mps", "mps"
    return "cpu", "cpu"


def _is_rank_zero() -> bool:
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def _cpu_threads(cfg: Config) -> int:
    """training.num_threads, or half of torch's default when the run trains on the CPU (see config.py: two
    threads on a busy 2-core machine spin against other processes and ran 10x slower than one)."""
    import torch

    if cfg.training.num_threads:
        return cfg.training.num_threads
    global _DEFAULT_THREADS
    if _DEFAULT_THREADS is None:
        _DEFAULT_THREADS = torch.get_num_threads()  # before any run changed it (a nested run, the demo base)
    if device_choice(cfg.training.accelerator)[1] == "cpu":
        return max(1, _DEFAULT_THREADS // 2)
    return _DEFAULT_THREADS


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
    if not cfg.run.dir and os.environ.get(SHARED_RUN_DIR_ENV) and not _is_rank_zero():
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


def train(cfg: Config, callbacks: list | None = None) -> Path:
    """Run training as configured; returns the run folder. A failure ends with status 'failed' and the error in
    plain words in status.json, then is raised again (UserErrors reach the CLI as one line). ``callbacks``: extra
    Lightning callbacks (run after the run-folder callback)."""
    run_dir = prepare_run_dir(cfg)
    rank_zero = _is_rank_zero()
    writer = RunWriter(run_dir) if rank_zero else _QuietWriter(run_dir)
    handlers = _log_handlers(run_dir) if rank_zero else []
    for handler in handlers:
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    writer.write_status("running", step=0, message="preparing data", config_name=cfg.run.name)
    writer.start_heartbeat_thread()
    import torch

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(_cpu_threads(cfg))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            return _train(cfg, run_dir, writer, list(callbacks or []))
    except Exception as err:
        message = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
        writer.write_status("failed", message=message)
        log.error("failed: %s", message)
        raise
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or SIGTERM (Lightning turns it into SystemExit)
        if writer.stop_requested() or not isinstance(sys.exc_info()[1], SystemExit):
            writer.write_status("cancelled", message="cancelled: the training process was interrupted")
        else:
            writer.write_status("failed", message="the training process was terminated (SIGTERM)")
        raise
    finally:
        torch.set_num_threads(threads)  # an in-process caller (tests, notebooks) gets its setting back
        writer.close()
        for handler in handlers:
            log.removeHandler(handler)
            handler.close()


def _prepare_data(cfg: Config, run_dir: Path):
    from core.data.designs import INTERPOLATION_WARNING
    from core.data.validate import validate
    from core.training.data import SetDataModule, load_adata, loss_mapping, make_split, resolve_mapping, resolve_split

    d = cfg.data.kwargs
    adata = load_adata(cfg)
    mapping = resolve_mapping(cfg, adata)
    report = validate(adata, loss_mapping(cfg, mapping), set_size=cfg.model.kwargs.cell_set_len)
    report.raise_if_errors()
    notes = [f"data: {w}" for w in report.warnings]
    nested = any("nested in condition" in w for w in report.warnings)
    if nested and cfg.model.kwargs.use_batch:
        notes.append(f"WARNING: model.kwargs.use_batch=true while '{mapping.batch_col}' is nested in condition: the "
                     "batch embedding can encode the condition itself; consider model.kwargs.use_batch=false")
    d.split = resolve_split(adata.obs, mapping, d.split)  # the saved config says which design was used
    split = make_split(adata.obs, mapping, d.split, d.val_fraction, d.test_fraction, cfg.training.seed, d.holdout)
    if d.split == "fraction":
        notes.append(f"WARNING: {INTERPOLATION_WARNING}")
    if _is_rank_zero():
        import pandas as pd

        frame = pd.DataFrame({"obs_name": adata.obs_names.astype(str), "split": split})
        atomic_write_text(run_dir / "split.csv", frame.to_csv(index=False))
    data = SetDataModule(cfg, adata, mapping, split, cell_types=report.usable_cell_types)
    notes += data.matching_notes()
    counts = {s: int((split == s).sum()) for s in ("train", "val", "test")}
    notes.append(f"split by {d.split}: {counts['train']} train, {counts['val']} val, {counts['test']} test cells "
                 f"(split.csv)")
    return data, mapping, notes


def _train(cfg: Config, run_dir: Path, writer, extra_callbacks: list) -> Path:
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    from core.model.build import build_for_training
    from core.training.callbacks import RunFolderCallback
    from core.training.module import STModule

    t, m = cfg.training, cfg.model.kwargs
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    L.seed_everything(t.seed, workers=True, verbose=False)
    data, mapping, data_notes = _prepare_data(cfg, run_dir)
    for note in data_notes:
        log.info(note)
    if _stopped_early(writer, "preparing data"):
        return run_dir

    accelerator, device = device_choice(t.accelerator)
    torch.manual_seed(t.seed)  # the model's initial weights do not depend on how much data preparation drew
    model, load_report, notes = build_for_training(cfg, data.table.z.shape[1], data.pert_map, mapping.control_pert,
                                                   data.batch_map)
    for note in notes:
        log.info("model: %s", note)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    log.info("model: %d of %d parameters trainable", n_train, n_all)

    if _is_rank_zero():
        save_config(cfg, run_dir / "config.yaml")
        atomic_write_json(run_dir / "pert_map.json", {"map": data.pert_map, "control": mapping.control_pert,
                                                      "rebuilt": load_report.get("new_perturbations", []),
                                                      "batch_map": data.batch_map})
        atomic_write_json(run_dir / "load_report.json", {**load_report, "notes": notes, "data_notes": data_notes,
                                                         "trainable_parameters": n_train, "parameters": n_all})
        atomic_write_json(run_dir / "env.json", environment(device))

    hparams = {"config": cfg.to_dict(), "pert_map": data.pert_map, "control": mapping.control_pert,
               "embed_dim": int(data.table.z.shape[1]), "batch_map": data.batch_map,
               "lora_applied": bool(cfg.model.init_from) and m.lora.enable}
    module = STModule(model, hparams)
    if _stopped_early(writer, "building the model"):
        return run_dir

    max_epochs = t.max_epochs if t.max_epochs is not None else (-1 if t.max_steps > 0 else 5)
    devices = _devices(t.devices, accelerator)
    world = _world_size(devices, t.strategy)
    steps_per_epoch = math.ceil(len(data.train_sets) / (t.batch_size * world))
    total = min(x for x in (t.max_steps if t.max_steps > 0 else math.inf,
                            max_epochs * steps_per_epoch if max_epochs > 0 else math.inf))
    val_every = min(t.val_freq, total) if t.val_freq else None
    callback = RunFolderCallback(writer, t.mhc_snapshot_every)
    ckpt_dir = run_dir / "checkpoints"
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val_loss", mode="min", save_last=True,
                                 save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False,
                                 save_on_train_epoch_end=False)
    precision = t.precision or ("bf16-mixed" if device == "cuda" else "32-true")
    resume = ckpt_dir / "last.ckpt" if t.resume and (ckpt_dir / "last.ckpt").exists() else None
    trainer = L.Trainer(
        accelerator=accelerator, devices=devices, strategy=t.strategy, precision=precision,
        max_epochs=max_epochs, max_steps=t.max_steps,
        val_check_interval=val_every, check_val_every_n_epoch=None if val_every else 1,
        callbacks=[callback, *extra_callbacks, checkpoint], plugins=[atomic_checkpoint_io()], logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0 if resume else -1,
        default_root_dir=run_dir, deterministic=False, gradient_clip_val=None,
    )
    if trainer.world_size > 1:
        os.environ[SHARED_RUN_DIR_ENV] = str(run_dir)
    writer.write_status("running", device=device, total_steps=total, message="starting")
    log.info("training on %s (%s): %d sets of %d cells per epoch, batch %d, %s steps", device, precision,
             len(data.train_sets), m.cell_set_len, t.batch_size, total)
    started = time.time()
    trainer.fit(module, datamodule=data, ckpt_path=resume)

    if not callback.cancelled and trainer.global_step > 0 and callback.last_val_step != trainer.global_step:
        _final_validation(trainer, module, data, checkpoint, ckpt_dir)
    trainer.save_checkpoint(ckpt_dir / "final.ckpt", weights_only=False)
    trainer.save_checkpoint(ckpt_dir / "last.ckpt", weights_only=False)  # where a resumed run continues
    state = "cancelled" if callback.cancelled else "completed"
    seconds = time.time() - started
    if _is_rank_zero():
        writer.export_metrics_csv()
        best = checkpoint.best_model_score
        atomic_write_json(run_dir / "train_summary.json", {
            "state": state, "steps": trainer.global_step, "epochs": trainer.current_epoch, "seconds": round(seconds, 2),
            "best_val_loss": None if best is None else float(best), "device": device, "precision": precision})
    writer.write_status(state, step=trainer.global_step, message="cancelled by request" if callback.cancelled else "")
    log.info("%s after %d steps in %.1f s; run folder %s", state, trainer.global_step, seconds, run_dir)
    return run_dir


def _devices(devices: str, accelerator: str):
    """training.devices as Lightning takes it: "auto" (1 on a CPU), a count, or a list of GPU ids ("0,1")."""
    if devices == "auto":
        return 1 if accelerator == "cpu" else "auto"
    return int(devices) if devices.isdigit() else devices


def _world_size(devices, strategy: str) -> int:
    """How many processes share an epoch's sets (for the step count shown before training starts)."""
    if isinstance(devices, int):
        return max(devices, 1)
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    if devices == "auto" and strategy != "auto":
        import torch

        return max(torch.cuda.device_count(), 1)
    return 1


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
