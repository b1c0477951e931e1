"""Which device a run (or an inference) uses: the one picker, for training and for ``core.infer`` alike. CUDA
first, then Apple MPS, then the CPU, unless the user says otherwise."""

from __future__ import annotations

import os

from core.errors import UserError


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


def pin_memory(accelerator: str) -> bool:
    """Whether the training loaders pin their batches (page-locked host memory, so that Lightning's copy to the
    GPU can be asynchronous): only when training.accelerator resolves to CUDA. Elsewhere pinning buys nothing,
    and on a machine without CUDA torch warns about it at every epoch."""
    return device_choice(accelerator)[1] == "cuda"


def lightning_devices(devices: str, accelerator: str):
    """training.devices as Lightning takes it: "auto" (1 on a CPU), a count, or a list of GPU ids ("0,1")."""
    if devices == "auto":
        return 1 if accelerator == "cpu" else "auto"
    if devices.isdigit():
        return int(devices)
    if accelerator == "cpu":
        raise UserError(f"training.devices={devices} names GPUs, but this run trains on the CPU; give a number of "
                        "processes instead (training.devices=2 with training.strategy=ddp)")
    return devices


def world_size(devices, strategy: str) -> int:
    """How many processes share an epoch's sets (for the step count shown before training starts)."""
    if isinstance(devices, int):
        return max(devices, 1)
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    if devices == "auto" and strategy != "auto":
        import torch

        return max(torch.cuda.device_count(), 1)
    return 1


def is_rank_zero() -> bool:
    """The process that writes the run folder: under DDP, Lightning's re-launched processes have another rank."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def default_precision(device: str, requested: str | None) -> str:
    """Lightning's precision: training.precision when set, else bf16 autocast on CUDA (bf16-mixed: weights and
    optimiser in float32, matrix products in bf16) and float32 elsewhere, where the project is measured."""
    return requested or ("bf16-mixed" if device == "cuda" else "32-true")
