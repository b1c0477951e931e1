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
import shutil
import tempfile
from pathlib import Path

from core.io.atomic import atomic_write_with

BASE_OVERRIDES = ["data.kwargs.dataset=atlas", "model.kwargs.lora.enable=false", "training.max_epochs=6",
                  "training.learning_rate=0.002", "training.seed=0", "training.accelerator=cpu"]

log = logging.getLogger("core.training")


def _base_config():
    from core.config import load_config

    return load_config(overrides=BASE_OVERRIDES)


# Bump when the model code changes what a base checkpoint holds.
BASE_VERSION = 2


def _identity() -> list:
    """What the base depends on: the demo data version, the model's sizes, the pretraining recipe."""
    from core.data.demo import CACHE_VERSION

    cfg = _base_config()
    m, t, d = cfg.model.kwargs, cfg.training, cfg.data.kwargs
    return [BASE_VERSION, CACHE_VERSION, BASE_OVERRIDES,
            [m.hidden_dim, m.n_layers, m.n_heads, m.backbone, m.cell_set_len, m.dist_loss, m.blur],
            [t.batch_size, t.weight_decay, t.grad_clip], [d.split, d.val_fraction, d.test_fraction]]


def demo_base_path() -> Path:
    from core.paths import cache_dir

    digest = hashlib.sha256(json.dumps(_identity()).encode()).hexdigest()[:10]
    return cache_dir() / f"demo_base_{digest}.ckpt"


def demo_base_checkpoint(train) -> str:
    """Path of the demo base checkpoint, pretraining it first with ``train`` (``core.training.run.train``, handed
    in by the trainer so that this module does not import the trainer that imports it) if it is not cached."""
    path = demo_base_path()
    if path.exists():
        return str(path)
    log.info("pretraining the demo base model on the demo atlas (once; cached at %s)", path)
    with tempfile.TemporaryDirectory(prefix="demo-base-") as tmp:
        cfg = _base_config()
        cfg.run.dir = f"{tmp}/run"
        run_dir = train(cfg)
        # a second process building at the same time just replaces it with its twin
        atomic_write_with(path, lambda tmp: shutil.copyfile(run_dir / "checkpoints" / "final.ckpt", tmp))
    for stale in path.parent.glob("demo_base_*.ckpt"):
        if stale != path:
            stale.unlink(missing_ok=True)  # bases of older code or data; open readers keep their copy
    return str(path)


def resolve_base(init_from: str | None, train) -> str | None:
    """``model.init_from`` as a checkpoint path: "demo" is the demo base (built with ``train`` on first use)."""
    return demo_base_checkpoint(train) if init_from == "demo" else init_from
