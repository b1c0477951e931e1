"""Run folders: safe names, atomic files, tolerant readers, interrupted detection, launch and cancel."""

import errno
import json
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from core import runs
from core.errors import CheckpointError, ConfigError, UserError
from core.runs import RunWriter, launcher, reader

# --- names ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["..", "../evil", "a/b", "/etc", "a\\b", "", "   ", ".hidden", "-x", "naïve", "a;rm", "x" * 101]
)
def test_unsafe_run_names_raise_config_error_on_one_line(name):
    with pytest.raises(ConfigError) as err:
        runs.safe_run_name(name)
    assert "\n" not in str(err.value)


def test_safe_run_name_keeps_plain_names_and_joins_blanks():
    assert runs.safe_run_name("st-lora_mhc.v2") == "st-lora_mhc.v2"
    assert runs.safe_run_name("  ST LoRA   mHC ") == "ST-LoRA-mHC"


def test_new_run_dir_numbers_taken_names(tmp_path):
    first = runs.new_run_dir(tmp_path, "exp")
    second = runs.new_run_dir(tmp_path, "exp")
    third = runs.new_run_dir(tmp_path, "exp")
    assert [p.name for p in (first, second, third)] == ["exp", "exp-2", "exp-3"]
    assert all(p.is_dir() and p.parent == tmp_path.resolve() for p in (first, second, third))


def _make_dirs(root, count, queue):
    queue.put([str(runs.new_run_dir(Path(root), "same")) for _ in range(count)])


def test_concurrent_processes_get_distinct_run_folders(tmp_path):
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [context.Process(target=_make_dirs, args=(tmp_path, 5, queue)) for _ in range(6)]
    for worker in workers:
        worker.start()
    made = [path for _ in workers for path in queue.get(timeout=30)]
    for worker in workers:
        worker.join(timeout=30)
    assert len(made) == 30 and len(set(made)) == 30
    assert len(list(tmp_path.iterdir())) == 30


def test_resolve_run_refuses_paths_outside_the_runs_folder(tmp_path):
    root = tmp_path / "runs"
    inside = runs.new_run_dir(root, "mine")
    (inside / "config.yaml").write_text("a: 1\n")
    assert runs.resolve_run("mine", root) == inside
    assert runs.resolve_run(str(inside), root) == inside
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "config.yaml").write_text("a: 1\n")
    with pytest.raises(ConfigError, match="outside the runs folder"):
        runs.resolve_run(str(outside), root)
    with pytest.raises(ConfigError):
        runs.resolve_run(f"{root}/../elsewhere", root)
    assert runs.resolve_run(str(outside), root, allow_outside=True) == outside.resolve()
    with pytest.raises(runs.RunFolderError, match="no run named"):
        runs.resolve_run("absent", root)


# --- atomic writes and disk errors -------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys
    from core.runs import atomic_write_json
    path, i = sys.argv[1], 0
    while True:
        i += 1
        atomic_write_json(path, {"i": i, "payload": "x" * (50_000 + (i % 7) * 10_000)})
    """
)


def test_reader_never_sees_a_half_written_file_even_when_the_writer_is_killed(tmp_path):
    target = tmp_path / "status.json"
    runs.atomic_write_json(target, {"i": 0, "payload": ""})
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], cwd=runs.REPO_ROOT)
    try:
        seen = set()
        deadline = time.monotonic() + 120  # only stops a hung test: reading ends once the writer replaced it often
        while len(seen) <= 50 and time.monotonic() < deadline:
            seen.add(json.loads(target.read_text())["i"])  # raises if ever half-written
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=10)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert len(seen) > 5, "the writer should have replaced the file many times"
    assert json.loads(target.read_text())["i"] >= max(seen)
    # the kill may leave one stray temp file, which is hidden and never the target
    assert all(p.name.startswith(".status.json.") for p in tmp_path.iterdir() if p != target)


@pytest.mark.parametrize(
    "code, phrase", [(errno.ENOSPC, "disk is full"), (errno.EACCES, "permission denied"),
                     (errno.EROFS, "read-only")]
)
def test_disk_errors_during_a_write_keep_the_old_file_and_say_what_to_do(tmp_path, monkeypatch, code, phrase):
    target = tmp_path / "status.json"
    runs.atomic_write_json(target, {"state": "running"})

    def failing_fsync(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(runs.RunFolderError, match=phrase) as err:
        runs.atomic_write_json(target, {"state": "completed"})
    assert runs.RUNS_DIR_ENV in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, UserError)
    assert json.loads(target.read_text()) == {"state": "running"}
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_unwritable_runs_folder_gives_run_folder_error(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(runs.RunFolderError, match="permission denied"):
            runs.new_run_dir(locked, "x")
    finally:
        locked.chmod(0o700)


def test_new_run_dir_reports_a_read_only_runs_folder(tmp_path, monkeypatch):
    real_mkdir = Path.mkdir

    def read_only_mkdir(self, *args, **kwargs):
        if self.parent == tmp_path.resolve():
            raise OSError(errno.EROFS, "Read-only file system")
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only_mkdir)
    with pytest.raises(runs.RunFolderError, match="read-only"):
        runs.new_run_dir(tmp_path, "x")


# --- writer and readers ------------------------------------------------------------------------------


def test_write_status_merges_fields_and_stamps_pid_heartbeat_and_end(tmp_path):
    writer = RunWriter(tmp_path / "r")
    first = writer.write_status("running", step=1, total_steps=10, device="cpu")
    assert first["pid"] == os.getpid() and first["started"] == pytest.approx(time.time(), abs=5)
    assert first["ended"] is None
    second = writer.write_status(None, step=5, progress=0.5)
    kept = (second["state"], second["total_steps"], second["device"], second["step"])
    assert kept == ("running", 10, "cpu", 5)
    done = writer.write_status("completed")
    on_disk = json.loads((tmp_path / "r" / "status.json").read_text())
    assert on_disk == done
    assert on_disk["ended"] >= on_disk["started"] and on_disk["progress"] == 1.0
    with pytest.raises(ValueError):
        writer.write_status("exploded")


def test_writer_keeps_fields_written_by_the_launcher(tmp_path):
    runs.atomic_write_json(tmp_path / "status.json", {"state": "queued", "created": 123.0, "launcher_pid": 1})
    status = RunWriter(tmp_path).write_status("running")
    assert status["created"] == 123.0 and status["launcher_pid"] == 1 and status["state"] == "running"


def test_heartbeat_is_rate_limited(tmp_path):
    writer = RunWriter(tmp_path, heartbeat_interval=0.2)
    writer.write_status("running")
    assert writer.heartbeat(step=3) is False
    time.sleep(0.25)
    assert writer.heartbeat(step=4) is True
    assert json.loads((tmp_path / "status.json").read_text())["step"] == 4


def test_heartbeat_thread_keeps_beating_during_a_long_step(tmp_path):
    writer = RunWriter(tmp_path, heartbeat_interval=0.05)
    first = writer.write_status("running")["heartbeat"]
    writer.start_heartbeat_thread()
    time.sleep(0.3)
    writer.close()
    assert json.loads((tmp_path / "status.json").read_text())["heartbeat"] > first + 0.1


def test_read_metrics_skips_a_half_written_last_line_and_corrupt_lines(tmp_path):
    writer = RunWriter(tmp_path)
    for step in range(3):
        row = {"split": "train", "step": step, "loss": 1.0 / (step + 1), "grad_norm": np.float32(2)}
        writer.append_metrics(row)
    writer.close()
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write('{"split": "train", "st')  # the trainer was killed mid-line
    frame = runs.read_metrics(tmp_path)
    assert list(frame["step"]) == [0, 1, 2]
    assert frame["loss"].tolist() == pytest.approx([1.0, 0.5, 1 / 3])
    assert frame["grad_norm"].tolist() == [2.0, 2.0, 2.0]
    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\nnot json\n{"step": 2}\n')
    assert list(runs.read_metrics(tmp_path)["step"]) == [0, 2]
    assert runs.read_metrics(tmp_path / "absent").empty


def test_export_metrics_csv_holds_the_same_rows(tmp_path):
    with RunWriter(tmp_path) as writer:
        writer.append_metrics({"split": "train", "step": 1, "loss": 0.5})
        writer.append_metrics({"split": "val", "step": 1, "val_loss": 0.7})
        path = writer.export_metrics_csv()
    lines = path.read_text().splitlines()
    assert lines[0] == "split,step,loss,val_loss"
    assert lines[1:] == ["train,1,0.5,", "val,1,,0.7"]


def _write_status(run_dir, **status):
    runs.atomic_write_json(run_dir / "status.json", status)


def _dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_read_status_reports_interrupted_for_a_dead_pid_or_a_stale_heartbeat(tmp_path):
    now = time.time()
    _write_status(tmp_path, state="running", pid=os.getpid(), heartbeat=now)
    assert runs.read_status(tmp_path)["state"] == "running"
    stale = runs.read_status(tmp_path, now=now + runs.HEARTBEAT_STALE_S + 1)
    assert stale["state"] == "interrupted" and stale["recorded_state"] == "running"
    assert "no heartbeat" in stale["message"]

    _write_status(tmp_path, state="running", pid=_dead_pid(), heartbeat=now)
    gone = runs.read_status(tmp_path)
    assert gone["state"] == "interrupted" and "no longer running" in gone["message"]

    _write_status(tmp_path, state="completed", pid=_dead_pid(), heartbeat=0)
    assert runs.read_status(tmp_path)["state"] == "completed"


def test_read_status_does_not_trust_a_recycled_pid(tmp_path):
    # A live process that started after the heartbeat was written cannot be the run's trainer: its pid
    # was recycled after the trainer died.
    heartbeat = time.time() - 5
    proc = subprocess.Popen(["sleep", "5"])
    try:
        _write_status(tmp_path, state="running", pid=proc.pid, heartbeat=heartbeat)
        assert runs.read_status(tmp_path)["state"] == "interrupted"
    finally:
        proc.kill()
        proc.wait()


def test_mhc_snapshots_round_trip_and_list_by_step(tmp_path):
    writer = RunWriter(tmp_path)
    h_res = np.array([[0.9, 0.1], [0.1, 0.9]], dtype=np.float32)
    layers = [{"h_res": h_res, "h_pre": [0.5, 0.5], "h_post": [1.0, 1.0], "layer_index": i} for i in (0, 2)]
    for step in (100, 0, 20):
        writer.snapshot_mhc(step, layers)
    listed = runs.list_mhc_snapshots(tmp_path)
    assert [step for step, _ in listed] == [0, 20, 100]
    assert listed[-1][1].name == "step_0000100.npz"
    snap = runs.load_mhc_snapshot(listed[-1][1])
    assert snap["step"] == 100 and snap["h_res"].shape == (2, 2, 2)
    np.testing.assert_array_equal(snap["h_res"][1], h_res)
    np.testing.assert_array_equal(snap["layer_indices"], [0, 2])
    assert snap["h_pre"].shape == (2, 2) and snap["h_post"].shape == (2, 2)


def test_list_runs_newest_first_with_status_and_config_summary(tmp_path):
    old = runs.new_run_dir(tmp_path, "old")
    new = runs.new_run_dir(tmp_path, "new")
    (tmp_path / "not-a-run").mkdir()
    for path, created, mhc in ((old, 100.0, False), (new, 200.0, True)):
        runs.atomic_write_json(path / "status.json", {"state": "completed", "created": created})
        yaml_text = f"model:\n  kwargs:\n    use_mhc: {str(mhc).lower()}\n    lora: {{r: 8}}\n"
        (path / "config.yaml").write_text(yaml_text)
    listed = runs.list_runs(tmp_path)
    assert [run["name"] for run in listed] == ["new", "old"]
    assert listed[0]["summary"] == {"model.kwargs.use_mhc": True}
    assert listed[0]["config"]["model.kwargs.lora.r"] == 8
    assert listed[0]["state"] == "completed" and listed[0]["has_eval"] is False


# --- checkpoints -------------------------------------------------------------------------------------


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_load_checkpoint_round_trips_tensors_written_atomically(tmp_path):
    import torch

    path = tmp_path / "checkpoints" / "last.ckpt"
    weights = {"w": torch.arange(6.0).reshape(2, 3)}
    state = {"state_dict": weights, "epoch": 3, "hyper_parameters": {"lr": 1e-3}}
    runs.atomic_torch_save(state, path)
    loaded = runs.load_checkpoint(path)
    assert torch.equal(loaded["state_dict"]["w"], state["state_dict"]["w"]) and loaded["epoch"] == 3
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_a_checkpoint_save_that_fills_the_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import torch

    path = tmp_path / "last.ckpt"
    runs.atomic_torch_save({"state_dict": {"w": torch.ones(3)}, "global_step": 10}, path)
    real_save = torch.save

    def save_until_full(obj, handle):
        real_save(obj, handle)
        handle.truncate(100)  # what reached the disk before it filled up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save_until_full)
    with pytest.raises(runs.RunFolderError, match="disk is full"):
        runs.atomic_torch_save({"state_dict": {"w": torch.zeros(3)}, "global_step": 20}, path)
    monkeypatch.undo()
    kept = runs.load_checkpoint(path)
    assert kept["global_step"] == 10 and torch.equal(kept["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_load_checkpoint_refuses_pickled_code_without_running_it(tmp_path, monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Evil()}, path)
    with pytest.raises(CheckpointError, match="not loaded for safety"):
        runs.load_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("content", [b"hello, I am a text file\n", b"", pickle.dumps([1, 2, 3])[:5]])
def test_load_checkpoint_rejects_files_that_are_not_checkpoints(tmp_path, content):
    path = tmp_path / "x.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        runs.load_checkpoint(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_load_checkpoint_rejects_a_truncated_checkpoint_and_a_missing_file(tmp_path):
    import torch

    path = tmp_path / "x.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:1500])
    with pytest.raises(CheckpointError, match="truncated"):
        runs.load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        runs.load_checkpoint(tmp_path / "absent.ckpt")


def test_lightning_checkpoints_saved_atomically_load_with_weights_only(tmp_path):
    import lightning.pytorch as pl
    import torch

    class Tiny(pl.LightningModule):
        def __init__(self, hidden: int = 3):
            super().__init__()
            self.save_hyperparameters()
            self.layer = torch.nn.Linear(2, hidden)

        def training_step(self, batch, _):
            return self.layer(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=4)
    trainer = pl.Trainer(
        max_steps=2, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
        enable_model_summary=False, plugins=[runs.atomic_checkpoint_io()], accelerator="cpu",
    )
    model = Tiny()
    trainer.fit(model, data)
    trainer.save_checkpoint(tmp_path / "final.ckpt")
    loaded = runs.load_checkpoint(tmp_path / "final.ckpt")
    assert loaded["hyper_parameters"] == {"hidden": 3}
    assert torch.equal(loaded["state_dict"]["layer.weight"], model.layer.weight.detach())
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# --- launch and cancel (with a stand-in trainer that uses the real RunWriter) --------------------------

FAKE_TRAINER = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time
    from core.runs import RunWriter
    run_dir = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("run.dir=")][0]
    mode = sys.argv[-1]
    print("fake trainer starting", mode, flush=True)
    if mode == "bad-config":
        print("error: unknown config key 'training.max_epoch'; did you mean training.max_epochs?",
              file=sys.stderr)
        sys.exit(2)
    writer = RunWriter(run_dir, heartbeat_interval=0.1)
    writer.write_status("running", step=0, total_steps=10_000)
    if mode == "ignore-stop":
        # a worker in the same process group, like a DataLoader worker
        worker = subprocess.Popen(["sleep", "60"])
        open(os.path.join(run_dir, "worker.pid"), "w").write(str(worker.pid))
    for step in range(10_000):
        # a row before the STOP check, as the real trainer logs a step before it sees STOP: a cancel that
        # lands before the first step still leaves one row (the check at the top raced with fast cancels)
        writer.append_metrics({"split": "train", "step": step, "loss": 1.0})
        writer.heartbeat(step=step)
        if mode in ("honour-stop", "slow-save") and writer.stop_requested():
            if mode == "slow-save":
                time.sleep(1.5)  # saving a big checkpoint
            writer.write_status("cancelled", step=step, message="cancelled by STOP")
            sys.exit(0)
        time.sleep(0.02)
    """
)


@pytest.fixture
def fake_trainer(tmp_path, monkeypatch):
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)

    def command(run_dir, overrides, config=None):
        extra = ["--config", str(config)] if config else []
        return [sys.executable, str(script), *extra, f"run.dir={run_dir}", *overrides]

    monkeypatch.setattr(launcher, "_train_command", command)
    return tmp_path / "runs"


def _wait_for_state(run_dir, states, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = runs.read_status(run_dir)
        if status["state"] in states:
            return status
        time.sleep(0.05)
    raise AssertionError(f"run never reached {states}: {runs.read_status(run_dir)}")


def test_launch_writes_queued_then_the_trainer_runs_and_logs(fake_trainer):
    run_dir = runs.launch_run(["honour-stop"], name="launch me", root=fake_trainer)
    assert run_dir.name == "launch-me"
    queued = json.loads((run_dir / "status.json").read_text())
    assert queued["state"] in ("queued", "running")
    running = _wait_for_state(run_dir, {"running"})
    assert running["pid"] != os.getpid() and os.getpgid(running["pid"]) == running["pid"]
    status = runs.cancel_run(run_dir)
    assert status["state"] == "cancelled" and status["message"] == "cancelled by STOP"
    assert "fake trainer starting honour-stop" in (run_dir / "log.txt").read_text()
    assert (run_dir / "STOP").exists() and not runs.read_metrics(run_dir).empty


def test_cancel_stops_a_trainer_that_ignores_stop_with_sigterm_to_its_group(fake_trainer):
    run_dir = runs.launch_run(["ignore-stop"], name="stubborn", root=fake_trainer)
    status = _wait_for_state(run_dir, {"running"})
    deadline = time.monotonic() + 120
    while not (run_dir / "worker.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    worker = int((run_dir / "worker.pid").read_text())
    final = runs.cancel_run(run_dir, grace_s=0.5)
    assert final["state"] == "cancelled"
    assert not reader._process_alive(status["pid"], status["heartbeat"])
    assert _wait_gone(worker), "the trainer's worker in the same process group must be stopped too"


def test_cancel_lets_a_trainer_that_saw_stop_finish_saving_instead_of_killing_it(fake_trainer):
    run_dir = runs.launch_run(["slow-save"], name="saving", root=fake_trainer)
    _wait_for_state(run_dir, {"running"})
    final = runs.cancel_run(run_dir, grace_s=0.3)
    assert final["state"] == "cancelled" and final["message"] == "cancelled by STOP"
    assert final["stopping"] <= final["ended"]


def _wait_gone(pid, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not reader._process_alive(pid, None):
            return True
        time.sleep(0.05)
    return False


def test_a_trainer_that_exits_with_an_error_is_marked_failed_with_its_message(fake_trainer):
    run_dir = runs.launch_run(["bad-config"], name="bad", root=fake_trainer)
    status = _wait_for_state(run_dir, {"failed"})
    assert status["message"].startswith("error: unknown config key 'training.max_epoch'")
    assert status["exit_code"] == 2


def test_a_sigkilled_trainer_reads_as_interrupted_and_resumes_in_the_same_folder(fake_trainer):
    run_dir = runs.launch_run(["honour-stop"], name="killed", root=fake_trainer)
    status = _wait_for_state(run_dir, {"running"})
    # kill only once a row is on disk: "running" is written before the first row, and killing in between
    # (a loaded machine) left no metrics to check
    deadline = time.monotonic() + 120.0
    while runs.read_metrics(run_dir).empty and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(status["pid"], signal.SIGKILL)
    interrupted = _wait_for_state(run_dir, {"interrupted"})
    assert interrupted["recorded_state"] == "running"
    assert len(runs.read_metrics(run_dir)) >= 1
    with pytest.raises(runs.RunFolderError, match="no config.yaml"):
        runs.resume_run(run_dir)
    (run_dir / "config.yaml").write_text("training:\n  seed: 0\n")
    (run_dir / "STOP").write_text("old cancel")
    assert runs.resume_run(run_dir, ["honour-stop"]) == run_dir
    resumed = _wait_for_state(run_dir, {"running"})
    assert resumed["pid"] != status["pid"] and resumed["created"] == status["created"]
    assert not (run_dir / "STOP").exists()
    with pytest.raises(runs.RunFolderError, match="still running"):
        runs.resume_run(run_dir)
    runs.cancel_run(run_dir)
    command = (run_dir / "log.txt").read_text().splitlines()
    resume_line = [line for line in command if line.startswith("$ ")][-1]
    assert f"--config {run_dir / 'config.yaml'} run.dir={run_dir} training.resume=true" in resume_line


# --- python -m core runs ------------------------------------------------------------------------------


def test_runs_cli_lists_runs_and_cancels_an_interrupted_one(tmp_path, capsys):
    from core.__main__ import main

    done = runs.new_run_dir(tmp_path, "done")
    RunWriter(done).write_status("completed", step=40, total_steps=40)
    orphan = runs.new_run_dir(tmp_path, "orphan")
    _write_status(orphan, state="running", pid=_dead_pid(), heartbeat=time.time(), step=7, progress=0.25)
    assert main(["runs", "--root", str(tmp_path), "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    states = {line.split()[0]: line.split()[1:4] for line in lines[1:]}
    assert states == {"done": ["completed", "100%", "40"], "orphan": ["interrupted", "25%", "7"]}
    assert main(["runs", "--root", str(tmp_path), "cancel", "orphan"]) == 0
    assert "cancelled: its process was not running" in capsys.readouterr().out
    assert json.loads((orphan / "status.json").read_text())["state"] == "cancelled"


def test_runs_cli_rejects_an_unsafe_name_with_exit_code_2(tmp_path, capsys):
    from core.__main__ import main

    assert main(["runs", "--root", str(tmp_path), "status", "a;b"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: run name 'a;b'") and err.count("\n") == 1


# --- launch and cancel with the real trainer ----------------------------------------------------------


@pytest.fixture(scope="module")
def small_demo_path(tmp_path_factory, small_demo):
    path = tmp_path_factory.mktemp("launch_data") / "small_demo.h5ad"
    small_demo.write_h5ad(path)
    return path


def test_real_trainer_rejecting_its_config_marks_the_run_failed_with_its_message(tmp_path):
    run_dir = runs.launch_run(["training.max_epoch=1"], name="typo", root=tmp_path)
    status = _wait_for_state(run_dir, {"failed"}, timeout=60)
    assert "training.max_epoch" in status["message"] and "training.max_epochs" in status["message"]
    assert status["exit_code"] == 2


@pytest.mark.slow
def test_real_training_cancelled_mid_run_stops_by_itself_and_keeps_checkpoints(tmp_path, small_demo_path):
    overrides = [
        f"data.kwargs.path={small_demo_path}", "data.kwargs.embed_key=X_pca", "data.kwargs.pert_col=condition",
        "data.kwargs.control_pert=sham", "data.kwargs.cell_type_key=cell_types_simple_short",
        "training.max_steps=100000", "training.val_freq=100000", "training.accelerator=cpu",
        "model.kwargs.hidden_dim=16", "model.kwargs.n_layers=1", "model.kwargs.n_heads=2",
        "model.kwargs.cell_set_len=8",
    ]
    run_dir = runs.launch_run(overrides, name="long", root=tmp_path)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        status = runs.read_status(run_dir)
        if status["state"] not in ("queued", "running"):
            raise AssertionError(f"run ended early: {status}\n{(run_dir / 'log.txt').read_text()[-2000:]}")
        if (status.get("step") or 0) >= 2:
            break
        time.sleep(0.1)
    # a grace long enough for any loaded machine: the trainer must see STOP at its next step and end by itself
    # (how fast that is on an idle machine is a benchmark, not a test)
    final = runs.cancel_run(run_dir, grace_s=120)
    assert final["state"] == "cancelled", final
    requested_at = float((run_dir / "STOP").read_text().split()[3])
    assert final["stopping"] >= requested_at
    assert not final["message"].startswith("cancelled: its process"), final
    saved = {p.name for p in (run_dir / "checkpoints").glob("*.ckpt")}
    assert "last.ckpt" in saved, (saved, (run_dir / "log.txt").read_text()[-2000:])
    assert runs.load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] >= 2
    assert len(runs.read_metrics(run_dir).query("split == 'train'")) >= 2
