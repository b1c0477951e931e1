"""One device picker for training and inference: CUDA, then MPS, then CPU, each checked on this machine by faking
what torch reports (the CUDA branch must not rot on CPU-only CI)."""

import pytest
import torch

from core.errors import UserError
from core.infer import _device
from core.training.devices import default_precision, device_choice, lightning_devices, world_size


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
