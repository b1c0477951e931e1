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

from core.io.atomic import atomic_write_with

BASE_OVERRIDES = ["data.kwargs.dataset=atlas", "model.kwargs.lora.enable=false", "training.max_epochs=6",
                  "training.learning_rate=0.002", "training.seed=0", "training.accelerator=cpu"]

log = logging.getLogger("core.training")


def _base_config():
    from core.config import load_config

    return load_config(overrides=BASE_OVERRIDES)


# Bump when the model code changes what a base checkpoint holds (3: the embedding's fingerprint).
BASE_VERSION = 3


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
        # a second process building at the same time just replaces them with their twins
        atomic_write_with(embedding_sidecar(path), lambda tmp: shutil.copyfile(run_dir / "embedding.json", tmp))
        atomic_write_with(path, lambda tmp: shutil.copyfile(run_dir / "checkpoints" / "final.ckpt", tmp))
    for stale in path.parent.glob("demo_base_*.ckpt"):
        if stale != path:
            stale.unlink(missing_ok=True)  # bases of older code or data; open readers keep their copy
            embedding_sidecar(stale).unlink(missing_ok=True)
    return str(path)


def resolve_base(init_from: str | None, train) -> str | None:
    """``model.init_from`` as a checkpoint path: "demo" is the demo base (built with ``train`` on first use)."""
    return demo_base_checkpoint(train) if init_from == "demo" else init_from


def embedding_sidecar(checkpoint: str | os.PathLike) -> Path:
    """Where a checkpoint's embedding fingerprint is kept as JSON, so that the app can check data against a
    base without importing torch: ``<run>/embedding.json`` for ``<run>/checkpoints/*.ckpt``, else
    ``<name>.embedding.json`` beside the file (the demo base)."""
    path = Path(checkpoint)
    if path.parent.name == "checkpoints":
        return path.parent.parent / "embedding.json"
    return path.with_suffix(".embedding.json")


def base_embedding(init_from: str | None) -> dict | None:
    """The embedding a base was trained on (``core.data.fingerprint``: key, dim, genes, hashes); None when
    training from scratch. Read from the JSON beside the checkpoint, else from the checkpoint itself (an older
    one has only its dimension). The demo base, before it is built, is described by the atlas it will be
    pretrained on, so checking data against it never starts a pretraining."""
    if not init_from:
        return None
    path = demo_base_path() if init_from == "demo" else Path(init_from).expanduser()
    if init_from != "demo":
        from core.arc.runtime import find_arc_folder

        arc = find_arc_folder(path)
        if arc is not None:  # an Arc State folder records its embedding's key and width, nothing more
            from core.arc.folder import read_arc_folder

            folder = read_arc_folder(*arc)
            return {"key": folder.embed_key, "dim": int(folder.hparams["input_dim"])}
    if init_from == "demo" and not path.exists():
        from core.data.demo import load_demo
        from core.data.fingerprint import embedding_fingerprint

        return embedding_fingerprint(load_demo("atlas"), "X_pca")  # DEMO_MAPPINGS["atlas"].embed_key
    sidecar = embedding_sidecar(path)
    if sidecar.is_file() and path.is_file():
        try:
            return json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass  # unreadable: the checkpoint says it too
    from core.io.checkpoint import load_checkpoint
    from core.model.build import read_checkpoint

    _, hp, _ = read_checkpoint(load_checkpoint(path), path)
    return hp.get("embedding") or {"dim": hp["embed_dim"]}
