"""``train(cfg)``: one complete run, from config to a finished run folder (see CONTRACT in core/runs.py).

The Trainer picks the device (CUDA, then Apple MPS, then CPU unless training.accelerator says otherwise), uses
bf16 mixed precision on CUDA, clips gradients, and passes devices/strategy through for multi-GPU DDP.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from core.config import Config, save_config
from core.errors import UserError
from core.runs import RunWriter, atomic_checkpoint_io, atomic_write_json, atomic_write_text, new_run_dir, runs_root

log = logging.getLogger("core.training")


def _device_choice(accelerator: str) -> tuple[str, str]:
    import torch

    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise UserError("training.accelerator=gpu but no CUDA GPU is visible; use auto or cpu, or install the "
                            "CUDA build of torch (README 'GPU')")
        return "gpu", "cuda"
    if accelerator == "cpu":
        return "cpu", "cpu"
    if accelerator == "mps" or (accelerator == "auto" and not torch.cuda.is_available()
                                and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        return "mps", "mps"
    if accelerator == "auto" and torch.cuda.is_available():
        return "gpu", "cuda"
    return "cpu", "cpu"


def _env(device: str) -> dict:
    import lightning
    import peft
    import torch
    import transformers

    commit = None
    head = Path(__file__).resolve().parents[2] / ".git" / "HEAD"
    if head.exists():
        ref = head.read_text().strip()
        ref_file = head.parent / ref[5:] if ref.startswith("ref: ") else None
        commit = ref_file.read_text().strip() if ref_file and ref_file.exists() else ref
    return {"python": platform.python_version(), "torch": torch.__version__, "lightning": lightning.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__, "numpy": np.__version__,
            "device": device, "cuda": torch.cuda.get_device_name(0) if device == "cuda" else None,
            "torch_threads": torch.get_num_threads(), "git_commit": commit, "argv": sys.argv}


def prepare_run_dir(cfg: Config) -> Path:
    if cfg.run.dir:
        run_dir = Path(cfg.run.dir).expanduser().resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir
    root = Path(cfg.run.root).expanduser() if cfg.run.root else runs_root()
    return new_run_dir(root, cfg.run.name)


def train(cfg: Config) -> Path:
    """Run training as configured; returns the run folder. Failures end with status 'failed' and a message."""
    run_dir = prepare_run_dir(cfg)
    writer = RunWriter(run_dir)
    handler = logging.FileHandler(run_dir / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    writer.write_status("running", step=0, message="preparing data")
    writer.start_heartbeat_thread()
    try:
        return _train(cfg, run_dir, writer)
    except UserError as err:
        writer.write_status("failed", message=str(err))
        raise
    except Exception as err:
        from core.training.module import NonFiniteLossError

        message = str(err) if isinstance(err, NonFiniteLossError) else f"{type(err).__name__}: {err}"
        writer.write_status("failed", message=message)
        if isinstance(err, NonFiniteLossError):
            raise UserError(message) from err
        raise
    finally:
        writer.close()
        log.removeHandler(handler)
        handler.close()


def _train(cfg: Config, run_dir: Path, writer: RunWriter) -> Path:
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    from core.data.validate import validate
    from core.model.build import build_for_training
    from core.training.callbacks import RunFolderCallback
    from core.training.data import CellTable, SetSampler, load_adata, make_split, pert_map_for, resolve_mapping
    from core.training.module import STModule

    t, m, d = cfg.training, cfg.model.kwargs, cfg.data.kwargs
    L.seed_everything(t.seed, workers=True, verbose=False)
    adata = load_adata(cfg)
    mapping = resolve_mapping(cfg, adata)
    report = validate(adata, mapping, set_size=None)
    report.raise_if_errors()
    for warning in report.warnings:
        log.info("data: %s", warning)
    if mapping.batch_col and d.match_by == "cell_type_batch" and any("nested" in w for w in report.warnings):
        log.info("data: batch is nested in condition, so controls are matched by cell type (batch has no controls)")
    split = make_split(adata.obs, mapping, d.split, d.val_fraction, d.test_fraction, t.seed)
    atomic_write_text(run_dir / "split.csv", "obs_name,split\n" + "".join(
        f"{name},{s}\n" for name, s in zip(adata.obs_names, split)))
    table = CellTable.from_adata(adata, mapping, split)
    pert_map = pert_map_for(table)

    accelerator, device = _device_choice(t.accelerator)
    model, load_report, notes = build_for_training(cfg, table.z.shape[1], pert_map, mapping.control_pert)
    for note in notes:
        log.info("model: %s", note)
    save_config(cfg, run_dir / "config.yaml")
    atomic_write_json(run_dir / "pert_map.json", {"map": pert_map, "control": mapping.control_pert,
                                                  "new": load_report.get("new_perturbations", [])})
    atomic_write_json(run_dir / "load_report.json", {**load_report, "notes": notes})
    atomic_write_json(run_dir / "env.json", _env(device))

    hparams = {"config": cfg.to_dict(), "pert_map": pert_map, "control": mapping.control_pert,
               "embed_dim": int(table.z.shape[1]), "n_batches": 0,
               "lora_applied": bool(cfg.model.init_from) and m.lora.enable}
    module = STModule(model, hparams)
    train_sets = SetSampler(table, "train", m.cell_set_len, pert_map, t.seed, match_by=d.match_by)
    val_sets = SetSampler(table, "val", m.cell_set_len, pert_map, t.seed + 1,
                          n_sets=max(8, 2 * len(table.split[table.split == "val"]) // m.cell_set_len // 4),
                          match_by=d.match_by, fixed=True)
    loader = torch.utils.data.DataLoader(train_sets, batch_size=t.batch_size, shuffle=False)
    val_loader = torch.utils.data.DataLoader(val_sets, batch_size=t.batch_size)

    callback = RunFolderCallback(writer, t.mhc_snapshot_every)
    ckpt_dir = run_dir / "checkpoints"
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val_loss", mode="min", save_last=True,
                                 save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False)
    max_epochs = t.max_epochs if t.max_epochs is not None else (-1 if t.max_steps > 0 else 5)
    precision = t.precision or ("bf16-mixed" if device == "cuda" else "32-true")
    trainer = L.Trainer(
        accelerator=accelerator, devices=(1 if t.devices == "auto" and accelerator == "cpu" else t.devices),
        strategy=t.strategy, precision=precision, max_epochs=max_epochs, max_steps=t.max_steps,
        val_check_interval=t.val_freq, check_val_every_n_epoch=None if t.val_freq else 1,
        callbacks=[callback, checkpoint], plugins=[atomic_checkpoint_io()], logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        default_root_dir=run_dir, deterministic=False,
    )
    writer.write_status("running", device=device, message="")
    log.info("training on %s (%s), %d train sets/epoch, set size %d", device, precision, len(train_sets),
             m.cell_set_len)
    resume = ckpt_dir / "last.ckpt" if t.resume and (ckpt_dir / "last.ckpt").exists() else None
    started = time.time()
    trainer.fit(module, loader, val_loader, ckpt_path=resume)
    trainer.save_checkpoint(ckpt_dir / "final.ckpt")
    writer.export_metrics_csv()
    state = "cancelled" if callback.cancelled else "completed"
    writer.write_status(state, step=trainer.global_step,
                        message="cancelled by request" if callback.cancelled else "")
    log.info("%s after %d steps in %.1f s", state, trainer.global_step, time.time() - started)
    atomic_write_json(run_dir / "train_summary.json", {"state": state, "steps": trainer.global_step,
                                                       "seconds": round(time.time() - started, 2),
                                                       "best_val_loss": _f(checkpoint.best_model_score)})
    return run_dir


def _f(value):
    return None if value is None else float(value)


def print_run(run_dir: Path) -> None:
    status = json.loads((run_dir / "status.json").read_text())
    print(f"run folder: {run_dir}\nstate: {status.get('state')}  steps: {status.get('step')}", file=sys.stdout)
    if os.environ.get("ST_QUIET") is None and (run_dir / "train_summary.json").exists():
        print((run_dir / "train_summary.json").read_text())
