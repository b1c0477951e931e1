"""Run folders (package): where a training run keeps its config, status, metrics, snapshots and checkpoints.

The layout is the contract in the module's README section below; the trainer writes it (``RunWriter``),
the app and the CLI read it (``read_status``, ``read_metrics``, ``list_runs``), and ``launch_run`` /
``cancel_run`` start and stop a training subprocess. Everything here is plain Python: torch, numpy and
pandas are imported inside the functions that need them, so importing this module is fast.

    <runs_root>/<name>/
        config.yaml  status.json  metrics.jsonl  metrics.csv  mhc/step_0000100.npz
        checkpoints/{best,last,final}.ckpt  pert_map.json  load_report.json  split.csv  env.json
        log.txt  STOP  eval/{metrics.json,per_cell_type.csv,predictions.h5ad}

Guarantees (README, "What happens when…"):
- Every file that is replaced (status, JSON, checkpoints, snapshots) is written to a temporary file in the
  same folder, fsynced, then renamed over the target with ``os.replace``. A reader sees the old file or
  the new one, never half of one; a crash leaves at most a stray ``.*.tmp`` file, which readers ignore.
- ``metrics.jsonl`` is append-only; a reader skips a half-written last line (the writer was killed).
- Run names typed by users cannot leave the runs folder; unique names come from ``os.mkdir``, which is
  atomic, so concurrent launches never share a folder.
- A run whose status says queued/running but whose process is gone, or whose heartbeat is older than
  ``HEARTBEAT_STALE_S``, reads as ``interrupted``.
- A full disk or an unwritable runs folder raises ``RunFolderError`` (a ``UserError``) saying what to do.

    layout.py    states, names, creating and finding run folders
    writer.py    RunWriter, used by the training process
    reader.py    status, metrics, config, run lists, mHC snapshots (app, CLI, evaluator)
    launcher.py  starting, resuming and cancelling a training subprocess
    handle.py    Run, a run folder read as Python objects (the public API returns it)
"""

from core.errors import RunFolderError
from core.io.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text, disk_error, ensure_dir
from core.io.checkpoint import atomic_checkpoint_io, atomic_torch_save, load_checkpoint
from core.paths import REPO_ROOT, RUNS_DIR_ENV, runs_root
from core.runs.handle import Run
from core.runs.launcher import cancel_run, launch_run, resume_run
from core.runs.layout import (
    ACTIVE_STATES,
    HEARTBEAT_INTERVAL_S,
    HEARTBEAT_STALE_S,
    STATES,
    TERMINAL_STATES,
    new_run_dir,
    resolve_run,
    safe_run_name,
)
from core.runs.reader import (
    SUMMARY_KEYS,
    list_mhc_snapshots,
    list_runs,
    load_mhc_snapshot,
    read_config,
    read_metrics,
    read_status,
)
from core.runs.writer import RunWriter

__all__ = [
    "ACTIVE_STATES", "HEARTBEAT_INTERVAL_S", "HEARTBEAT_STALE_S", "REPO_ROOT", "RUNS_DIR_ENV", "Run",
    "RunFolderError", "RunWriter", "STATES", "SUMMARY_KEYS", "TERMINAL_STATES", "atomic_checkpoint_io",
    "atomic_torch_save", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "cancel_run", "disk_error",
    "ensure_dir", "launch_run", "list_mhc_snapshots", "list_runs", "load_checkpoint", "load_mhc_snapshot",
    "new_run_dir", "read_config", "read_metrics", "read_status", "resolve_run", "resume_run", "runs_root",
    "safe_run_name",
]
