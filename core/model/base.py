"""The demo base model: an ST model pretrained from scratch on the demo atlas, as ST-Tahoe is for real users.

Built once (about 20 s on 2 CPU cores) and cached in data/cache/; ``model.init_from=demo`` uses it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

BASE_EPOCHS = 8
BASE_VERSION = "v1"


def demo_base_path() -> Path:
    from core.data.demo import cache_dir

    return cache_dir() / f"demo_base_{BASE_VERSION}.ckpt"


def demo_base_checkpoint() -> str:
    path = demo_base_path()
    if path.exists():
        return str(path)
    from core.config import load_config
    from core.training.run import train

    with tempfile.TemporaryDirectory(prefix="demo-base-") as tmp:
        cfg = load_config(overrides=["data.kwargs.dataset=atlas", "model.kwargs.lora.enable=false",
                                     f"training.max_epochs={BASE_EPOCHS}", "training.learning_rate=0.002",
                                     f"run.dir={tmp}/run"])
        run_dir = train(cfg)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".tmp{os.getpid()}")
        shutil.copyfile(run_dir / "checkpoints" / "final.ckpt", partial)
        os.replace(partial, path)
    return str(path)
