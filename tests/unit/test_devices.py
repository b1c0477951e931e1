"""One device picker for training and inference: CUDA, then MPS, then CPU, each checked on this machine by faking
what torch reports (the CUDA branch must not rot on CPU-only CI)."""

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from core.config import load_config
from core.data.mapping import ColumnMapping
from core.errors import ConfigError, UserError
from core.infer import _device
from core.training.data import SetDataModule, make_split
from core.training.devices import default_precision, device_choice, lightning_devices, pin_memory, world_size
from core.training.resume_state import ResumableLoader


def test_auto_takes_cuda_first_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device_choice("auto") == ("gpu", "cuda") and _device() == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert device_choice("auto") == ("mps", "mps") and _device() == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert device_choice("auto") == ("cpu", "cpu") and _device() == "cpu"
    assert device_choice("cpu") == ("cpu", "cpu")


def test_asking_for_a_gpu_that_is_not_there_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA GPU is visible") as err:
        device_choice("gpu")
    assert "\n" not in str(err.value)


def test_lightning_devices_and_world_size():
    assert lightning_devices("auto", "cpu") == 1 and lightning_devices("auto", "gpu") == "auto"
    assert lightning_devices("2", "gpu") == 2 and lightning_devices("0,1", "gpu") == "0,1"
    assert world_size(2, "ddp") == 2 and world_size("0,1,3", "ddp") == 3 and world_size(1, "auto") == 1


def test_cuda_trains_under_bf16_autocast_and_the_cpu_in_float32_unless_the_config_says():
    assert default_precision("cuda", None) == "bf16-mixed"
    assert default_precision("cpu", None) == "32-true" and default_precision("mps", None) == "32-true"
    assert default_precision("cuda", "32-true") == "32-true" and default_precision("cpu", "bf16-mixed") == "bf16-mixed"


def test_loaders_pin_memory_only_when_the_run_trains_on_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pin_memory("auto") and pin_memory("cuda") and pin_memory("gpu")
    assert not pin_memory("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert not pin_memory("auto") and not pin_memory("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert not pin_memory("auto") and not pin_memory("mps")  # MPS shares memory with the CPU: nothing to pin
    with pytest.raises(UserError, match="no CUDA GPU is visible"):
        pin_memory("cuda")  # the same one-line error the run itself gives


def _tiny_data(accelerator: str) -> SetDataModule:
    """40 cells per (cell type, condition), a 5-d embedding: enough for the train and validation samplers."""
    rng = np.random.default_rng(0)
    obs = pd.DataFrame({"condition": np.repeat(["sham", "burn"] * 2, 40),
                        "cell_type": np.repeat(["A", "B"], 80)}, index=[f"c{i}" for i in range(160)])
    adata = ad.AnnData(np.zeros((160, 3), dtype=np.float32), obs=obs)
    adata.obsm["X_pca"] = rng.normal(size=(160, 5)).astype(np.float32)
    mapping = ColumnMapping("condition", "sham", "cell_type", None, "X_pca")
    cfg = load_config(None, ["model.kwargs.cell_set_len=8", "training.batch_size=2",
                             f"training.accelerator={accelerator}"])
    return SetDataModule(cfg, adata, mapping, make_split(adata.obs, mapping, "fraction", 0.2, 0.2, 0))


def test_a_cuda_runs_loaders_are_pinned_and_a_cpu_runs_are_not(monkeypatch):
    """Built on this CPU-only machine with CUDA faked; never iterated here, where torch has nothing to pin to.
    Lightning copies the batches to the GPU itself, non-blocking from pinned memory (apply_func.move_data_to_device)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # building a pinned loader must not warn on a machine without CUDA
        cuda = _tiny_data("cuda")
        train, val = cuda.train_dataloader(), cuda.val_dataloader()
    assert isinstance(train, ResumableLoader) and train.pin_memory and val.pin_memory
    assert len(train) == int(np.ceil(len(cuda.train_sets) / 2)) > 0 and len(val) > 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpu = _tiny_data("auto")
    train, val = cpu.train_dataloader(), cpu.val_dataloader()
    assert not train.pin_memory and not val.pin_memory
    batch = next(iter(train))  # the CPU run's loader does load: same sets as before, unpinned
    assert all(not t.is_pinned() for t in batch.values() if isinstance(t, torch.Tensor))


def test_devices_are_checked_in_one_line_before_lightning_sees_them():
    for ok in ("auto", "2", "-1", "0,1", "[0,1]"):
        load_config(overrides=[f"training.devices={ok}"])
    for bad in ("two", "0", "1.5", "0;1"):
        with pytest.raises(ConfigError, match="training.devices must be auto, a number of devices") as err:
            load_config(overrides=[f"training.devices={bad}"])
        assert "\n" not in str(err.value)
    # GPU ids on the CPU: Lightning would raise a TypeError deep inside; two CPU processes are a count
    assert lightning_devices("2", "cpu") == 2
    with pytest.raises(UserError, match="names GPUs, but this run trains on the CPU"):
        lightning_devices("0,1", "cpu")


def test_strategy_is_checked_in_one_line_against_lightnings_registry():
    for ok in ("auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true"):
        assert load_config(overrides=[f"training.strategy={ok}"]).training.strategy == ok
    with pytest.raises(ConfigError, match=r"training.strategy must be .* got 'dpp'; did you mean ddp") as err:
        load_config(overrides=["training.strategy=dpp"])
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"got 'zzzz' \(ddp, ddp_spawn, fsdp"):
        load_config(overrides=["training.strategy=zzzz"])
