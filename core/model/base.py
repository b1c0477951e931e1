"""The demo base model: an ST model pretrained from scratch on the demo atlas, as ST-Tahoe is for real users.

Built once (about half a minute on 2 CPU cores) and cached in data/cache/ under a name that changes with its
config, so a change of model defaults never reuses a stale base. ``model.init_from=demo`` uses it, and
``python -m core train data.kwargs.dataset=atlas model.kwargs.lora.enable=false`` is the same pretraining
as an ordinary run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

BASE_OVERRIDES = ["data.kwargs.dataset=atlas", "model.kwargs.lora.enable=false", "training.max_epochs=6",
                  "training.learning_rate=0.002", "training.seed=0", "training.accelerator=cpu"]

log = logging.getLogger("core.training")


def _base_config():
    from core.config import load_config

    return load_config(overrides=BASE_OVERRIDES)


def demo_base_path() -> Path:
    from core.data.demo import CACHE_VERSION, cache_dir

    cfg = _base_config().to_dict()
    cfg.pop("run")
    digest = hashlib.sha256(json.dumps([cfg, CACHE_VERSION], sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir() / f"demo_base_{digest}.ckpt"


def demo_base_checkpoint() -> str:
    """Path of the demo base checkpoint, pretraining it first if it is not cached yet."""
    path = demo_base_path()
    if path.exists():
        return str(path)
    from core.training.run import train

    log.info("pretraining the demo base model on the demo atlas (once; cached at %s)", path)
    with tempfile.TemporaryDirectory(prefix="demo-base-") as tmp:
        cfg = _base_config()
        cfg.run.dir = f"{tmp}/run"
        run_dir = train(cfg)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".tmp{os.getpid()}")
        shutil.copyfile(run_dir / "checkpoints" / "final.ckpt", partial)
        os.replace(partial, path)  # a second process building at the same time just replaces it with its twin
    return str(path)
