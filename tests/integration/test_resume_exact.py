"""Resuming from a mid-epoch checkpoint is bit-identical to never stopping (issue 12, point 4): a run cancelled at
a random step and resumed ends with every tensor equal to its uninterrupted twin's (to 1e-6), the same
validation loss, the full step count, each metrics step once, and no temp files left over."""

import json
import os
import random

import lightning as L
import pytest
import torch

from core import runs
from core.config import load_config
from core.training.run import train

pytestmark = pytest.mark.slow  # trains, or drives a real server: left out of the fast lane

MAPPING = ["data.kwargs.pert_col=condition", "data.kwargs.control_pert=sham",
           "data.kwargs.cell_type_key=cell_types_simple_short", "data.kwargs.embed_key=X_pca"]
# 2 epochs of about 15 steps, validation (hence a mid-epoch last.ckpt) every 4 steps; mHC and velocity on, so
# every part that keeps state is resumed too
TINY = ["model.kwargs.hidden_dim=16", "model.kwargs.n_layers=2", "model.kwargs.n_heads=2",
        "model.kwargs.cell_set_len=8", "training.batch_size=2", "training.max_epochs=2", "training.val_freq=4",
        "training.accelerator=cpu", "model.kwargs.use_mhc=true", "model.kwargs.mhc.n_streams=2",
        "model.kwargs.use_velocity_alignment=true", "data.kwargs.velocity_key=velocity_pca",
        "model.kwargs.velocity_warmup_steps=3", "training.mhc_snapshot_every=1000"]


class StopAtStep(L.Callback):
    """Writes STOP once the run reaches ``step`` (what the app's Cancel button does)."""

    def __init__(self, run_dir, step):
        self.run_dir, self.step = run_dir, step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            (self.run_dir / "STOP").write_text("cancel")


@pytest.fixture(scope="module")
def twins(small_demo, tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume_exact")
    data = folder / "d.h5ad"
    small_demo[small_demo.obs["cell_types_simple_short"].isin(
        sorted(small_demo.obs["cell_types_simple_short"].unique())[:3])].copy().write_h5ad(data)
    overrides = [f"data.kwargs.path={data}", *MAPPING, *TINY]
    reference = train(load_config(None, [*overrides, f"run.dir={folder / 'reference'}"]))
    total = json.loads((reference / "train_summary.json").read_text())["steps"]
    # a random step, printed so a failure can be replayed with ST_TEST_CANCEL_AT
    cancel_at = int(os.environ.get("ST_TEST_CANCEL_AT") or random.Random().randint(1, total - 2))
    print(f"cancelling at step {cancel_at} of {total}")
    cancelled = folder / "cancelled"
    train(load_config(None, [*overrides, f"run.dir={cancelled}"]), callbacks=[StopAtStep(cancelled, cancel_at)])
    assert runs.read_status(cancelled)["state"] == "cancelled"
    stopped_at = runs.load_checkpoint(cancelled / "checkpoints" / "last.ckpt")["global_step"]
    (cancelled / "STOP").unlink()
    # a killed writer's temp file, as a SIGKILL during a checkpoint save leaves one
    (cancelled / "checkpoints" / ".last.ckpt.999999.0123abcd.tmp").write_bytes(b"half a checkpoint")
    train(load_config(None, [*overrides, f"run.dir={cancelled}", "training.resume=true"]))
    return {"reference": reference, "resumed": cancelled, "total": total, "cancel_at": cancel_at,
            "stopped_at": stopped_at}


def test_the_cancel_checkpoint_lies_inside_an_epoch(twins):
    assert twins["stopped_at"] in (twins["cancel_at"], twins["cancel_at"] + 1)
    assert 0 < twins["stopped_at"] < twins["total"]


def test_the_resumed_run_ends_with_every_tensor_of_its_uninterrupted_twin(twins):
    ref = runs.load_checkpoint(twins["reference"] / "checkpoints" / "final.ckpt")
    res = runs.load_checkpoint(twins["resumed"] / "checkpoints" / "final.ckpt")
    assert sorted(ref["state_dict"]) == sorted(res["state_dict"])
    for key, value in ref["state_dict"].items():
        torch.testing.assert_close(res["state_dict"][key], value, atol=1e-6, rtol=0, msg=key)
    for a, b in zip(ref["optimizer_states"][0]["state"].values(), res["optimizer_states"][0]["state"].values()):
        for name in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=0)
    assert res["global_step"] == ref["global_step"] == twins["total"]


def test_the_resumed_run_completes_at_the_full_step_count_with_the_same_validation_loss(twins):
    status = runs.read_status(twins["resumed"])
    assert status["state"] == "completed" and status["step"] == twins["total"]
    ref_val = runs.read_metrics(twins["reference"]).query("split == 'val'")
    res_val = runs.read_metrics(twins["resumed"]).query("split == 'val'")
    assert list(res_val["step"]) == list(ref_val["step"])
    assert res_val["val_loss"].tolist() == pytest.approx(ref_val["val_loss"].tolist(), abs=1e-6)


def test_metrics_hold_each_step_once_on_disk_and_temp_files_are_gone(twins):
    lines = [json.loads(line) for line in (twins["resumed"] / "metrics.jsonl").read_text().splitlines()]
    keys = [(row["split"], row["step"]) for row in lines]
    assert len(keys) == len(set(keys))
    assert [s for split, s in keys if split == "train"] == list(range(1, twins["total"] + 1))
    ref_train = runs.read_metrics(twins["reference"]).query("split == 'train'")["loss"].tolist()
    res_train = runs.read_metrics(twins["resumed"]).query("split == 'train'")["loss"].tolist()
    assert res_train == pytest.approx(ref_train, abs=1e-6)
    assert not [p for p in twins["resumed"].rglob("*.tmp")]
