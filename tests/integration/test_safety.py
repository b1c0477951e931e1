"""Safety: a crafted checkpoint never runs code on any path that loads one, user-typed run names stay
inside the runs folder, and nothing a user hands over (upload, checkpoint, snapshot) is unpickled."""

import ast
import contextlib
import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from core import runs
from core.data.io import read_h5ad
from core.errors import CheckpointError, ConfigError
from core.runs import launcher

REPO = Path(__file__).resolve().parents[2]


class Payload:
    """Unpickling this object creates ``marker``: if the file appears, code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _evil_checkpoint(folder: Path, kind: str) -> tuple[Path, Path]:
    marker = folder / f"pwned-{kind}"
    path = folder / f"evil-{kind}.ckpt"
    if kind == "torch-zip":  # what torch.save writes, with the payload next to real-looking content
        torch.save({"state_dict": {"model.w": torch.zeros(2)}, "hyper_parameters": Payload(marker)}, path)
    else:  # a bare pickle stream renamed to .ckpt (torch's legacy format)
        path.write_bytes(pickle.dumps({"state_dict": Payload(marker)}, protocol=2))
    return path, marker


def _main(argv: list[str]) -> tuple[int, str]:
    from core.__main__ import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


@pytest.fixture
def isolated_runs(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    monkeypatch.setenv(runs.RUNS_DIR_ENV, str(root))
    return root


# --- crafted checkpoints ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["torch-zip", "bare-pickle"])
def test_load_checkpoint_refuses_a_reduce_payload_without_running_it(tmp_path, kind):
    path, marker = _evil_checkpoint(tmp_path, kind)
    with pytest.raises(CheckpointError) as err:
        runs.load_checkpoint(path)
    assert "\n" not in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["torch-zip", "bare-pickle"])
def test_a_payload_checkpoint_given_as_base_model_is_refused_by_train(tmp_path, isolated_runs, kind):
    path, marker = _evil_checkpoint(tmp_path, kind)
    code, stderr = _main(["train", f"model.init_from={path}", "training.max_epochs=1", "model.kwargs.hidden_dim=32",
                          "model.kwargs.n_layers=2"])
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and str(path) in errors[0], stderr[-2000:]
    assert not marker.exists()


def test_a_payload_checkpoint_given_to_infer_is_refused(tmp_path, isolated_runs):
    path, marker = _evil_checkpoint(tmp_path, "torch-zip")
    code, stderr = _main(["infer", "--checkpoint", str(path), "--output", str(tmp_path / "out.h5ad")])
    assert code == 2 and f"error: {path}" in stderr
    assert not marker.exists() and not (tmp_path / "out.h5ad").exists()


def test_a_payload_last_checkpoint_in_a_run_folder_is_refused_on_resume(tmp_path, isolated_runs):
    run_dir = tmp_path / "runs" / "resume-me"
    (run_dir / "checkpoints").mkdir(parents=True)
    path, marker = _evil_checkpoint(tmp_path, "torch-zip")
    os.replace(path, run_dir / "checkpoints" / "last.ckpt")
    code, stderr = _main(["train", f"run.dir={run_dir}", "training.resume=true", "training.max_epochs=1",
                          "model.kwargs.hidden_dim=32", "model.kwargs.n_layers=2", "training.accelerator=cpu"])
    assert code == 2, stderr[-2000:]
    assert "last.ckpt" in stderr and "for safety" in stderr
    assert not marker.exists()
    assert runs.read_status(run_dir)["state"] == "failed"


@pytest.mark.slow
def test_the_cli_refuses_a_payload_checkpoint_in_a_real_process(tmp_path):
    path, marker = _evil_checkpoint(tmp_path, "torch-zip")
    env = dict(os.environ, ST_RUNS_DIR=str(tmp_path / "runs"), PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "core", "infer", "--checkpoint", str(path), "--output",
                           str(tmp_path / "out.h5ad")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "for safety" in proc.stderr
    assert not marker.exists()


# --- run names -------------------------------------------------------------------------------------------------

ESCAPING_NAMES = ["../escaped", "..", "a/../../escaped", "/tmp/st-absolute-run", "sub/dir", "..\\escaped", "~root"]


@pytest.mark.parametrize("name", ESCAPING_NAMES)
def test_a_run_name_typed_on_the_command_line_cannot_leave_the_runs_folder(tmp_path, isolated_runs, name):
    before = set(tmp_path.rglob("*"))
    code, stderr = _main(["train", f"run.name={name}", "training.max_epochs=1"])
    assert code == 2
    assert stderr.count("\n") == 1 and stderr.startswith("error: run name")
    created = set(tmp_path.rglob("*")) - before
    assert all(isolated_runs in p.parents or p == isolated_runs for p in created), created
    assert not Path("/tmp/st-absolute-run").exists()


@pytest.mark.parametrize("name", ESCAPING_NAMES)
def test_launch_run_refuses_an_escaping_name_before_starting_anything(tmp_path, name):
    root = tmp_path / "runs"
    children = dict(launcher._CHILDREN)
    with pytest.raises(ConfigError):
        runs.launch_run(["training.max_epochs=1"], name, root=root)
    assert launcher._CHILDREN == children
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["runs"])
    assert not root.exists() or not any(root.iterdir())


# --- nothing uploaded is unpickled -----------------------------------------------------------------------------


def test_an_uploaded_h5ad_carrying_a_pickle_is_read_as_data_only(small_demo, tmp_path):
    marker = tmp_path / "pwned-upload"
    path = tmp_path / "upload.h5ad"
    small_demo.write_h5ad(path)
    with h5py.File(path, "a") as handle:  # a pickle stream stored as opaque bytes, where a loader might unpickle
        handle["uns"].create_dataset("payload", data=np.void(pickle.dumps(Payload(marker))))
    adata = read_h5ad(path.read_bytes())
    assert adata.n_obs == small_demo.n_obs
    assert not marker.exists()


def test_an_mhc_snapshot_holding_a_pickled_object_is_refused(tmp_path):
    marker = tmp_path / "pwned-npz"
    path = tmp_path / "step_0000010.npz"
    np.savez(path, h_res=np.array([Payload(marker)], dtype=object), step=np.asarray(10))
    with pytest.raises(ValueError, match="allow_pickle"):
        runs.load_mhc_snapshot(path)
    assert not marker.exists()


UNPICKLERS = {("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"), ("pd", "read_pickle"),
              ("pandas", "read_pickle"), ("joblib", "load"), ("dill", "load"), ("dill", "loads"),
              ("cloudpickle", "load"), ("cloudpickle", "loads")}


def _unsafe_calls(path: Path) -> list[str]:
    """Calls in ``path`` that could unpickle: the UNPICKLERS, torch.load without weights_only=True, np.load with
    allow_pickle=True, and Lightning's load_from_checkpoint (which unpickles unless told otherwise)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
        name = node.func.attr
        keywords = {k.arg: k.value for k in node.keywords}
        is_true = {k: isinstance(v, ast.Constant) and v.value is True for k, v in keywords.items()}
        is_false = {k: isinstance(v, ast.Constant) and v.value is False for k, v in keywords.items()}
        where = f"{path.relative_to(REPO)}:{node.lineno}"
        if (owner, name) in UNPICKLERS:
            found.append(f"{where} {owner}.{name}")
        elif owner == "torch" and name == "load" and not is_true.get("weights_only"):
            found.append(f"{where} torch.load without weights_only=True")
        elif owner in ("np", "numpy") and name == "load" and "allow_pickle" in keywords \
                and not is_false["allow_pickle"]:
            found.append(f"{where} np.load with allow_pickle")
        elif name == "load_from_checkpoint":
            found.append(f"{where} load_from_checkpoint")
    return found


def test_no_code_in_core_or_app_can_unpickle_what_users_hand_over():
    files = sorted(p for folder in ("core", "app") for p in (REPO / folder).rglob("*.py"))
    assert len(files) > 20
    assert [call for path in files for call in _unsafe_calls(path)] == []


def test_the_unpickling_scan_finds_each_kind_of_unsafe_call(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    sample = tmp_path / "sample.py"
    sample.write_text("import pickle, torch, numpy as np\npickle.loads(b'')\ntorch.load('x')\n"
                      "torch.load('x', weights_only=False)\nnp.load('x', allow_pickle=True)\n"
                      "torch.load('x', weights_only=True)\nnp.load('x', allow_pickle=False)\n")
    assert [c.split(" ", 1)[1] for c in _unsafe_calls(sample)] == [
        "pickle.loads", "torch.load without weights_only=True", "torch.load without weights_only=True",
        "np.load with allow_pickle"]


# --- serving ---------------------------------------------------------------------------------------------------


def test_the_app_server_binds_to_loopback_with_an_upload_limit_by_default():
    import tomllib

    server = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text(encoding="utf-8"))["server"]
    assert server["address"] == "127.0.0.1"
    assert 0 < server["maxUploadSize"] <= 2048  # MB; larger files are read from a path on the server
