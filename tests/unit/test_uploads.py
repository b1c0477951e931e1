"""Saved uploads are bounded (issue 12, point 15): past ST_UPLOADS_MAX_BYTES the oldest go first, never the one
just saved nor one a queued or running run reads; ``python -m core uploads clean`` does the same by hand."""

import json
import os
import socket
import time

import pytest

from core.errors import ConfigError
from core.runs import uploads


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("ST_RUNS_DIR", str(tmp_path / "runs"))
    path = tmp_path / "runs" / ".uploads"
    path.mkdir(parents=True)
    return path


def _saved(folder, name, size, age):
    path = folder / name
    path.write_bytes(b"x" * size)
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def test_the_oldest_go_first_until_the_total_fits(folder):
    old, mid, new = (_saved(folder, n, 1000, age) for n, age in (("a.h5ad", 300), ("b.h5ad", 200), ("c.h5ad", 100)))
    _saved(folder, ".c.h5ad.123.abcd1234.tmp", 5000, 0)  # a save in progress is neither counted nor removed
    assert uploads.evict(limit=2000) == [old]
    assert sorted(p.name for p in uploads.saved_files()) == ["b.h5ad", "c.h5ad"]
    assert uploads.evict(limit=2000) == []
    assert uploads.evict(limit=0, keep=new) == [mid]
    assert (folder / ".c.h5ad.123.abcd1234.tmp").exists()


def test_a_file_a_running_run_reads_is_kept(folder, tmp_path):
    used = _saved(folder, "used.h5ad", 1000, 500)
    other = _saved(folder, "other.h5ad", 1000, 400)
    run = tmp_path / "runs" / "training-now"
    run.mkdir()
    (run / "status.json").write_text(json.dumps({"state": "running", "pid": os.getpid(), "host": socket.gethostname(),
                                                 "heartbeat": time.time()}))
    (run / "config.yaml").write_text(f"data:\n  kwargs:\n    path: {used}\n")
    assert uploads.evict(limit=0) == [other]
    assert used.exists()


def test_the_limit_comes_from_the_environment(folder, monkeypatch):
    monkeypatch.setenv("ST_UPLOADS_MAX_BYTES", "1K")
    _saved(folder, "a.h5ad", 800, 20)
    _saved(folder, "b.h5ad", 800, 10)
    assert [p.name for p in uploads.evict()] == ["a.h5ad"]
    monkeypatch.setenv("ST_UPLOADS_MAX_BYTES", "lots")
    with pytest.raises(ConfigError, match="ST_UPLOADS_MAX_BYTES='lots' is not a size"):
        uploads.evict()


def test_the_clean_command_removes_all_not_in_use(folder, capsys):
    from core.__main__ import main

    for i in range(3):
        _saved(folder, f"{i}.h5ad", 10, 10 - i)
    assert main(["uploads", "clean", "--all"]) == 0
    assert "removed 3 files" in capsys.readouterr().out
    assert uploads.saved_files() == []
    assert main(["uploads", "clean", "--max-bytes", "many"]) == 2
