"""Training the ST model on the demo: what mHC costs per step, whole fine-tunes, throughput and memory.

Rows:
- one LoRA fine-tuning step (forward, backward, AdamW) of the default demo model (hidden 128, 4 layers, 8 sets
  of 32 cells) with mHC (dynamic, the default; and static) against the same step without; target <= 1.10x.
  mHC and plain steps are timed alternately, so a busy machine slows both alike.
- where that step's extra time goes, and how much other memory between blocks slows them (bench/step_breakdown.py).
- whole 5-epoch fine-tunes of the demo base on burn/sham (``python -m core train model.init_from=demo ...``):
  LoRA, LoRA+mHC, LoRA+velocity, LoRA+mHC+velocity; wall time (target <= 60 s) and training cells/s.
- peak memory (max RSS) of a whole training process, LoRA+mHC against LoRA; targets <= 2 GB and <= 1.2x.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import Row, Timing, interleaved

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "ST-LoRA": [],
    "ST-LoRA-mHC": ["model.kwargs.use_mhc=true"],
    "ST-LoRA + velocity": ["model.kwargs.use_velocity_alignment=true"],
    "ST-LoRA-mHC + velocity": ["model.kwargs.use_mhc=true", "model.kwargs.use_velocity_alignment=true"],
}


def demo_step_parts(extra: list[str]):
    """(module, model, optimizer, batch): the demo fine-tune's LoRA model from the cached demo base with ``extra``
    overrides, its optimiser, and one fixed batch of training sets."""
    import torch

    from core.config import load_config
    from core.model.build import build_for_training
    from core.training.data import SetDataModule, load_adata, make_split, resolve_mapping
    from core.training.demo_base import demo_base_checkpoint
    from core.training.module import STModule
    from core.training.run import train

    cfg = load_config(overrides=["model.init_from=demo", "run.name=bench", *extra])
    adata = load_adata(cfg)
    mapping = resolve_mapping(cfg, adata)
    d = cfg.data.kwargs
    data = SetDataModule(cfg, adata, mapping, make_split(adata.obs, mapping, d.split, d.val_fraction,
                                                         d.test_fraction, 0))
    batch = next(iter(data.train_dataloader()))
    base = demo_base_checkpoint(train)
    torch.manual_seed(0)
    model, _, _ = build_for_training(cfg, data.table.z.shape[1], data.pert_map, mapping.control_pert, base_path=base)
    module = STModule(model, {"config": cfg.to_dict(), "pert_map": data.pert_map, "control": mapping.control_pert,
                              "embed_dim": int(data.table.z.shape[1]), "batch_map": {}, "lora_applied": True})
    return module, model, module.configure_optimizers(), batch


def demo_step(module, model, optimizer, batch, phases: dict | None = None):
    """A closure doing one optimisation step (forward, backward, clipping, AdamW) on ``batch``; with ``phases``, it
    adds each call's seconds under "forward", "backward" and "optimiser"."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]

    def step():
        t0 = time.perf_counter()
        total, _, _ = module.losses(batch, 10)
        t1 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if phases is not None:
            phases["forward"] += t1 - t0
            phases["backward"] += t2 - t1
            phases["optimiser"] += time.perf_counter() - t2

    return step


def _step_fn(extra: list[str]):
    """A closure doing one optimisation step of the demo fine-tune on a fixed batch of sets, and its cell count."""
    module, model, optimizer, batch = demo_step_parts(extra)
    return demo_step(module, model, optimizer, batch), int(batch["z_control"].shape[0] * batch["z_control"].shape[1])


def _step_rows(quick: bool) -> list[Row]:
    from core.training.demo_base import demo_base_checkpoint
    from core.training.run import train

    demo_base_checkpoint(train)  # build the cached base outside the timings
    plain, cells = _step_fn([])
    fns = {"plain": plain, "mhc": _step_fn(["model.kwargs.use_mhc=true"])[0],
           "mhc_static": _step_fn(["model.kwargs.use_mhc=true", "model.kwargs.mhc.dynamic=false"])[0]}
    timings = interleaved(fns, repeats=5 if quick else 9, steps_per_sample=3 if quick else 10)
    base = timings["plain"]
    rows = []
    for name, label in (("mhc", "dynamic mHC (default)"), ("mhc_static", "static mHC (mhc.dynamic=false)")):
        t = timings[name]
        ratio = t.median_s / base.median_s
        rows.append(Row("training", f"demo LoRA step with {label}, 8x32 cells", t, "same step without mHC", base,
                        target="<= 1.10x (CPU)", met=ratio <= 1.10,
                        extra={"cells_per_s": round(cells / t.median_s), "cells_per_s_baseline":
                               round(cells / base.median_s)}))
    return rows


def _finetune_rows(quick: bool) -> list[Row]:
    from core.config import load_config
    from core.runs import read_metrics
    from core.training.run import train

    epochs, repeats = (1, 1) if quick else (5, 5)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as root:
        for i in range(repeats + 1):  # the first round warms caches (demo, velocity, base) and is dropped
            for name, extra in VARIANTS.items():
                cfg = load_config(overrides=["model.init_from=demo", f"training.max_epochs={epochs}",
                                             f"run.root={root}", f"run.name={name.replace(' + ', '-')}", *extra])
                start = time.perf_counter()
                run_dir = train(cfg)
                wall = time.perf_counter() - start
                rows = read_metrics(run_dir)
                rows = rows[rows["split"] == "train"]
                if i > 0:
                    results[name].append((wall, rows["cells"].sum() / rows["step_time"].sum()))
    base = Timing.of([w for w, _ in results["ST-LoRA"]])
    out = []
    for name in VARIANTS:
        walls = [w for w, _ in results[name]]
        timing = Timing.of(walls)
        out.append(Row("training", f"demo fine-tune {epochs} epochs, {name} (from the demo base)", timing,
                       "ST-LoRA" if name != "ST-LoRA" else None, base if name != "ST-LoRA" else None,
                       target="<= 60 s", met=timing.median_s <= 60,
                       extra={"train_cells_per_s": round(statistics.median(c for _, c in results[name]))}))
    return out


# The peak of this process's own memory: VmHWM where /proc exists. ru_maxrss would not do on Linux: it keeps
# the high-water mark of the image before exec, i.e. of the (large) benchmark process that spawned this one.
_PEAK = """
import resource, sys
from pathlib import Path
from core.config import load_config
from core.training.run import train
train(load_config(overrides=sys.argv[1:]))
status = Path("/proc/self/status")
hwm = [l for l in status.read_text().splitlines() if l.startswith("VmHWM:")] if status.exists() else []
print("PEAK_KB", int(hwm[0].split()[1]) if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_mb(extra: list[str], root: str) -> float:
    out = subprocess.run([sys.executable, "-c", _PEAK, "model.init_from=demo", "training.max_epochs=1",
                          f"run.root={root}", "run.name=peak", *extra], cwd=REPO, capture_output=True, text=True,
                         check=True)
    line = next(line for line in out.stdout.splitlines() if line.startswith("PEAK_KB"))
    return int(line.split()[1]) / 1024


def _memory_rows() -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="bench-mem-") as root:
        plain = _peak_mb([], root)
        mhc = _peak_mb(["model.kwargs.use_mhc=true", "model.kwargs.use_velocity_alignment=true"], root)
    return [Row("training", "peak memory (max RSS) of a demo fine-tune process, LoRA-mHC + velocity", None,
                target="<= 2 GB; <= 1.2x ST-LoRA", met=mhc <= 2048 and mhc / plain <= 1.2,
                extra={"peak_mb": round(mhc), "peak_mb_st_lora": round(plain), "ratio": round(mhc / plain, 3)})]


def run(quick: bool) -> list[Row]:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    from bench.step_breakdown import run as breakdown_rows

    rows = _step_rows(quick) + breakdown_rows(quick) + _finetune_rows(quick) + _memory_rows()
    for row in rows:
        row.extra["load_average_at_start"] = load
    return rows
