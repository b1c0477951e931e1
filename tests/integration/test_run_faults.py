"""Faults during a real training run: a NaN loss, SIGKILL then resume, cancel, concurrent launches and
an unwritable runs folder. Tiny model (hidden 32, 2 layers) on the small demo written to a tmp .h5ad."""

import math
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from core import runs
from core.errors import UserError
from core.runs import launcher

pytestmark = pytest.mark.slow  # trains, or drives a real server: left out of the fast lane

REPO = Path(__file__).resolve().parents[2]
MAPPING = ["data.kwargs.pert_col=condition", "data.kwargs.control_pert=sham",
           "data.kwargs.cell_type_key=cell_types_simple_short", "data.kwargs.batch_col=mouse_id",
           "data.kwargs.embed_key=X_pca"]
TINY = ["model.kwargs.hidden_dim=32", "model.kwargs.n_layers=2", "training.accelerator=cpu", "training.seed=0"]


@pytest.fixture(scope="module")
def small_h5ad(small_demo, tmp_path_factory):
    path = tmp_path_factory.mktemp("fault_data") / "small_demo.h5ad"
    small_demo.write_h5ad(path)
    return path


def _overrides(small_h5ad, *extra):
    return [f"data.kwargs.path={small_h5ad}", *MAPPING, *TINY, *extra]


def _wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _finished(run_dir):
    return runs.read_status(run_dir)["state"] not in runs.ACTIVE_STATES


def _state_dict(path):
    return runs.load_checkpoint(path)["state_dict"]


# --- SIGKILL mid-epoch, then resume; launched together with an uninterrupted twin ------------------------------

# Batch of one set: ~30 steps an epoch, so the kill lands well inside the second epoch.
RESUME_ARGS = ["training.max_epochs=3", "training.batch_size=1"]


@pytest.fixture(scope="module")
def killed_and_reference(small_h5ad, tmp_path_factory):
    """Two identical runs launched at the same moment with the same name; the second is SIGKILLed in the
    middle of epoch 2, once epoch 1's checkpoint is on disk."""
    root = tmp_path_factory.mktemp("fault_runs")
    overrides = _overrides(small_h5ad, *RESUME_ARGS)
    with ThreadPoolExecutor(max_workers=2) as pool:
        reference, killed = pool.map(lambda _: runs.launch_run(overrides, "same-name", root=root), range(2))

    def mid_second_epoch():
        if not (killed / "checkpoints" / "last.ckpt").exists():
            return False
        rows = runs.read_metrics(killed)
        return "epoch" in rows and bool(((rows["split"] == "train") & (rows["epoch"] >= 1)).any())

    _wait(mid_second_epoch, 240, "the second epoch of the run to kill")
    child = launcher._CHILDREN.get(killed.resolve()) or launcher._CHILDREN[killed]
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)
    killed_status = runs.read_status(killed)
    _wait(lambda: _finished(reference), 300, "the reference run")
    return {"root": root, "reference": reference, "killed": killed, "killed_status": killed_status,
            "overrides": overrides}


def test_runs_launched_at_once_get_distinct_folders_seen_alike_by_two_readers(killed_and_reference):
    ref, killed, root = killed_and_reference["reference"], killed_and_reference["killed"], killed_and_reference["root"]
    assert ref != killed
    assert sorted(p.name for p in (ref, killed)) == ["same-name", "same-name-2"]
    first, second = runs.list_runs(root), runs.list_runs(root)  # two browser tabs
    assert [r["name"] for r in first] == [r["name"] for r in second]
    assert sorted(r["name"] for r in first) == ["same-name", "same-name-2"]


def test_a_sigkilled_run_leaves_a_readable_folder_that_reads_as_interrupted(killed_and_reference):
    killed = killed_and_reference["killed"]
    status = killed_and_reference["killed_status"]
    assert status["state"] == "interrupted" and status["recorded_state"] == "running"
    rows = runs.read_metrics(killed)
    assert (rows["split"] == "train").sum() >= 2
    assert runs.read_config(killed)["model"]["kwargs"]["hidden_dim"] == 32
    last = runs.load_checkpoint(killed / "checkpoints" / "last.ckpt")
    assert last["epoch"] == 0 and last["global_step"] > 0
    assert not (killed / "checkpoints" / "final.ckpt").exists()
    assert [r["state"] for r in runs.list_runs(killed_and_reference["root"]) if r["path"] == killed] == ["interrupted"]


def test_resume_after_sigkill_reaches_the_same_weights_and_val_loss_as_an_uninterrupted_run(killed_and_reference):
    ref, killed = killed_and_reference["reference"], killed_and_reference["killed"]
    assert runs.read_status(ref)["state"] == "completed", runs.read_status(ref)
    proc = subprocess.run([sys.executable, "-m", "core", "train", f"run.dir={killed}", "training.resume=true",
                           *killed_and_reference["overrides"]], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert runs.read_status(killed)["state"] == "completed"
    ref_state, resumed_state = _state_dict(ref / "checkpoints" / "final.ckpt"), \
        _state_dict(killed / "checkpoints" / "final.ckpt")
    assert sorted(ref_state) == sorted(resumed_state)
    for key, value in ref_state.items():
        torch.testing.assert_close(resumed_state[key], value, atol=1e-6, rtol=0, msg=key)
    ref_val = runs.read_metrics(ref).query("split == 'val'")["val_loss"].iloc[-1]
    resumed_val = runs.read_metrics(killed).query("split == 'val'")["val_loss"].iloc[-1]
    assert math.isfinite(ref_val)
    assert abs(resumed_val - ref_val) <= 1e-6


# --- cancel --------------------------------------------------------------------------------------------------


def test_cancel_ends_the_run_as_cancelled_and_keeps_its_checkpoints(small_h5ad, tmp_path):
    # How fast a cancel lands is a benchmark (bench/), not a test: on a loaded CI machine any bound races.
    run_dir = runs.launch_run(_overrides(small_h5ad, "training.max_epochs=200", "training.batch_size=1"),
                              "to-cancel", root=tmp_path)
    _wait(lambda: (run_dir / "checkpoints" / "last.ckpt").exists(), 240, "the first checkpoint")
    child = launcher._CHILDREN.get(run_dir.resolve()) or launcher._CHILDREN[run_dir]
    status = runs.cancel_run(run_dir)
    child.wait(timeout=120)
    assert status["state"] == "cancelled"
    for name in ("last.ckpt", "best.ckpt"):  # saved before the cancel: kept, whole, however the run ended
        checkpoint = runs.load_checkpoint(run_dir / "checkpoints" / name)
        assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values())
    train_rows = int((runs.read_metrics(run_dir)["split"] == "train").sum())
    assert 0 < runs.load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] <= train_rows
    assert status["message"] in ("cancelled by request", "cancelled: its process was stopped",
                                 "cancelled: the training process was interrupted")
    if status["message"] == "cancelled by request":  # it saw STOP (not SIGTERM): it saved where it stopped
        assert child.returncode == 0
        assert runs.load_checkpoint(run_dir / "checkpoints" / "final.ckpt")["global_step"] == status["step"]
        assert train_rows == status["step"]


# --- NaN loss ------------------------------------------------------------------------------------------------


def _poison(monkeypatch, term):
    """From the first training step of the second epoch, make ``term`` (and so the total) NaN."""
    from core.training.module import STModule

    original = STModule.losses
    poisoned = {}

    def losses(self, batch, step):
        total, named, velocity_metrics = original(self, batch, step)
        if self.training and self.current_epoch >= 1:
            poisoned.setdefault("step", step)
            nan = torch.tensor(float("nan"))
            named = dict(named, **{term: named[term] + nan})
            total = total + nan
        return total, named, velocity_metrics

    monkeypatch.setattr(STModule, "losses", losses)
    return poisoned


def _train_in_process(overrides, run_dir):
    from core.config import load_config
    from core.training.run import train

    return train(load_config(None, [*overrides, f"run.dir={run_dir}"]))


def test_a_nan_loss_fails_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(
        small_h5ad, tmp_path, monkeypatch):
    from core.training.module import NonFiniteLossError

    poisoned = _poison(monkeypatch, "dist_loss")
    run_dir = tmp_path / "nan-run"
    with pytest.raises(NonFiniteLossError) as err:
        _train_in_process(_overrides(small_h5ad, "training.max_epochs=3"), run_dir)
    step = poisoned["step"]
    assert isinstance(err.value, UserError) and "\n" not in str(err.value)
    status = runs.read_status(run_dir)
    assert status["state"] == "failed"
    assert f"at step {step}" in status["message"] and "loss" in status["message"]
    assert "NaN or infinite" in status["message"]
    last = runs.load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert last["global_step"] == step - 1  # saved at the end of the first epoch, before the bad step
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())
    assert not (run_dir / "checkpoints" / "final.ckpt").exists()
    train_rows = runs.read_metrics(run_dir).query("split == 'train'")
    assert train_rows["step"].max() == step - 1 and np.isfinite(train_rows["loss"]).all()


def test_a_nan_velocity_term_is_named_in_the_failure(small_h5ad, tmp_path, monkeypatch):
    from core.training.module import NonFiniteLossError

    _poison(monkeypatch, "vel_loss")
    with pytest.raises(NonFiniteLossError) as err:
        _train_in_process(_overrides(small_h5ad, "training.max_epochs=2", "model.kwargs.use_velocity_alignment=true",
                                     "data.kwargs.velocity_key=velocity_pca",
                                     "data.kwargs.confidence_key=velocity_confidence"), tmp_path / "nan-vel")
    assert err.value.term == "vel loss"


# --- unwritable runs folder ----------------------------------------------------------------------------------


@pytest.fixture
def unwritable_root(tmp_path):
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        yield locked / "runs"
        locked.chmod(0o700)
    else:  # root ignores permissions; sysfs refuses new folders even to root
        if not Path("/sys").is_dir():
            pytest.skip("needs a folder that even root cannot write")
        yield Path("/sys/st-runs-test")


def test_an_unwritable_runs_folder_gives_one_line_and_exit_2_from_the_cli(unwritable_root):
    env = dict(os.environ, ST_RUNS_DIR=str(unwritable_root), PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "core", "train", "training.max_epochs=1"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert str(unwritable_root) in lines[0] and runs.RUNS_DIR_ENV in lines[0]


def test_launching_into_an_unwritable_runs_folder_raises_run_folder_error(unwritable_root):
    with pytest.raises(runs.RunFolderError, match=runs.RUNS_DIR_ENV) as err:
        runs.launch_run(["training.max_epochs=1"], "x", root=unwritable_root)
    assert "\n" not in str(err.value)


# --- full disk while saving a checkpoint ---------------------------------------------------------------------


def test_a_full_disk_while_saving_fails_the_run_clearly_and_keeps_the_previous_checkpoint(
        small_h5ad, tmp_path, monkeypatch):
    """The first epoch's checkpoints save; from the third ``torch.save`` on, the disk is full half-way through
    the write. The run ends as failed with the disk-full sentence, and last.ckpt is still epoch 1's, whole."""
    import errno

    real_save = torch.save
    calls = {"n": 0}

    def save_until_disk_full(obj, handle, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= 2:
            return real_save(obj, handle, *args, **kwargs)
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save_until_disk_full)
    run_dir = tmp_path / "disk-full"
    with pytest.raises(runs.RunFolderError) as err:
        _train_in_process(_overrides(small_h5ad, "training.max_epochs=3"), run_dir)
    assert "disk is full" in str(err.value) and "\n" not in str(err.value)
    status = runs.read_status(run_dir)
    assert status["state"] == "failed" and "disk is full" in status["message"]
    monkeypatch.setattr(torch, "save", real_save)
    last = runs.load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    first_epoch_steps = int(runs.read_metrics(run_dir).query("split == 'train' and epoch == 0")["step"].max())
    assert last["epoch"] == 0 and last["global_step"] == first_epoch_steps
    assert not [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    assert not (run_dir / "checkpoints" / "final.ckpt").exists()


def test_a_full_disk_inside_torchs_zip_writer_is_the_same_one_line(small_h5ad, tmp_path, monkeypatch):
    """On a real full disk the OSError comes from inside torch's zip writer, which re-raises it as
    ``RuntimeError ... unexpected pos``: the run must still end with the disk-full sentence."""
    import errno
    import io

    real_save = torch.save
    calls = {"n": 0}

    class FillsUp(io.RawIOBase):
        def __init__(self, handle, room):
            self.handle, self.room = handle, room

        def writable(self):
            return True

        def write(self, data):
            if len(data) > self.room:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.room -= len(data)
            return self.handle.write(data)

    def save_onto_a_filling_disk(obj, handle, *args, **kwargs):
        calls["n"] += 1
        target = handle if calls["n"] <= 2 else FillsUp(handle, 4096)
        return real_save(obj, target, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_onto_a_filling_disk)
    run_dir = tmp_path / "zip-full"
    with pytest.raises(runs.RunFolderError) as err:
        _train_in_process(_overrides(small_h5ad, "training.max_epochs=3"), run_dir)
    assert "disk is full" in str(err.value) and "\n" not in str(err.value)
    assert runs.read_status(run_dir)["state"] == "failed"
    assert not [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.endswith(".tmp")]
