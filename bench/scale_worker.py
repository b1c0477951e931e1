"""One measurement of bench/bench_scale.py in a process of its own, so that its peak memory is its own.

``python bench/scale_worker.py build PATH CELLS_PER_GROUP GENES``  the demo generator at that size, written to PATH
``python bench/scale_worker.py velocity PATH``                      the velocity pipeline to v_z and confidence
                                                                  (its libraries imported first: import_s)
``python bench/scale_worker.py epoch PATH RUNS_ROOT``               one training epoch of the demo model (scratch)
``python bench/scale_worker.py step HIDDEN LAYERS HEADS DIM SET_LEN SETS MHC``  ST-LoRA(-mHC) training steps

Each prints one JSON line: seconds (per step for ``step``), the peak resident memory (VmHWM) in MB, and what
else it measured.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def peak_mb() -> float:
    # VmHWM, not ru_maxrss: on Linux the latter keeps the high-water mark of the process image before exec
    status = Path("/proc/self/status")
    if status.exists():
        line = next(x for x in status.read_text().splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(path: str, cells_per_group: str, genes: str) -> dict:
    from core.data.demo import generate
    from core.io.atomic import atomic_write_with

    start = time.perf_counter()
    adata, _ = generate(cells_per_group=int(cells_per_group), n_genes=int(genes), atlas_cells_per_group=2,
                        umap=False)
    generated = time.perf_counter() - start
    atomic_write_with(Path(path), adata.write_h5ad)
    return {"seconds": time.perf_counter() - start, "generate_s": generated, "cells": adata.n_obs,
            "genes": adata.n_vars}


def velocity(path: str) -> dict:
    import anndata as ad

    from core.velocity.pipeline import compute_velocity

    adata = ad.read_h5ad(path)
    # the libraries the pipeline imports on first use (torch, numba, scanpy, scvelo: about 7 s on the 2-core
    # machine), before the clock, as in the app or a notebook that has used them once, and as the in-process
    # velocity rows, timed after a warm-up, have them; their time is reported beside (import_s)
    start = time.perf_counter()
    import scanpy  # noqa: F401
    import scvelo.tools.transition_matrix  # noqa: F401

    import core.velocity.fast  # noqa: F401
    imported = time.perf_counter() - start
    start = time.perf_counter()
    summary = compute_velocity(adata, engine="fast", use_cache=False)
    return {"seconds": time.perf_counter() - start, "import_s": imported, "cells": adata.n_obs,
            "genes": adata.n_vars, "steps_s": summary.get("timings_s", {})}


def epoch(path: str, root: str) -> dict:
    from core.config import load_config
    from core.runs import read_metrics
    from core.training.run import train

    cfg = load_config(overrides=[f"data.kwargs.path={path}", "training.max_epochs=1", f"run.root={root}",
                                 "run.name=scale-epoch"])
    start = time.perf_counter()
    run_dir = train(cfg)
    seconds = time.perf_counter() - start
    rows = read_metrics(run_dir)
    rows = rows[rows["split"] == "train"]
    return {"seconds": seconds, "train_cells": int(rows["cells"].sum()), "steps": int(len(rows)),
            "train_cells_per_s": round(float(rows["cells"].sum() / rows["step_time"].sum()))}


def make_step(hidden: int, layers: int, heads: int, dim: int, set_len: int, sets: int, mhc: bool,
              device: str = "cpu", autocast: bool = False, dynamic: bool = True):
    """(one ST-LoRA(-mHC) training step on a fixed batch, cells per step, model): the trainer's losses, its
    clipping and its fused AdamW; under ``autocast`` the forward runs in bf16 on ``device``, as Lightning's
    bf16-mixed does on CUDA; ``dynamic=False``: static mHC mappings (mhc.dynamic=false)."""
    import torch

    from core.config import load_config
    from core.model.build import add_adapters, plain_model
    from core.training.module import STModule

    overrides = [f"model.kwargs.hidden_dim={hidden}", f"model.kwargs.n_layers={layers}",
                 f"model.kwargs.n_heads={heads}", f"model.kwargs.cell_set_len={set_len}",
                 f"training.batch_size={sets}"]  # the config's memory check then sizes the batch we run
    if mhc:
        overrides += ["model.kwargs.use_mhc=true", f"model.kwargs.mhc.dynamic={str(dynamic).lower()}"]
    cfg = load_config(overrides=overrides)
    torch.manual_seed(0)
    model = plain_model(cfg, dim, n_perts=2)
    add_adapters(model, cfg, lora=True)
    model.to(device)
    module = STModule(model, {"config": cfg.to_dict(), "pert_map": {"sham": 0, "burn": 1}, "control": "sham",
                              "embed_dim": dim, "batch_map": {}, "lora_applied": True})
    optimizer = module.configure_optimizers()
    gen = torch.Generator().manual_seed(1)
    batch = {"z_control": torch.randn(sets, set_len, dim, generator=gen),
             "z_perturbed": torch.randn(sets, set_len, dim, generator=gen) + 0.5,
             "pert": torch.ones(sets, dtype=torch.long)}
    batch = {k: v.to(device) for k, v in batch.items()}
    trainable = [p for p in model.parameters() if p.requires_grad]

    def one_step() -> float:
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=autocast):
            total, _, _ = module.losses(batch, 10)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        return float(total.detach())

    return one_step, sets * set_len, model


def step(hidden: str, layers: str, heads: str, dim: str, set_len: str, sets: str, mhc: str) -> dict:
    one_step, cells, model = make_step(*map(int, (hidden, layers, heads, dim, set_len, sets)), mhc=mhc == "1")
    one_step()  # warm-up: allocator, oneDNN's kernel choice
    samples = []
    for _ in range(2):
        start = time.perf_counter()
        one_step()
        samples.append(time.perf_counter() - start)
    trainable = [p for p in model.parameters() if p.requires_grad]
    return {"seconds": statistics.median(samples), "samples_s": samples, "cells": cells,
            "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
            "trainable_m": round(sum(p.numel() for p in trainable) / 1e6, 2)}


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    result = {"build": build, "velocity": velocity, "epoch": epoch, "step": step}[command](*args)
    print(json.dumps({**result, "peak_mb": round(peak_mb())}))
