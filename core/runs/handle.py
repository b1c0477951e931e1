"""``Run``: one run folder, read as Python objects, for notebooks and scripts (``core.train`` returns one).

Every property reads the folder afresh, so a ``Run`` held in a notebook follows a training process that is still
writing (the app and the CLI read the same files)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from core.runs.layout import resolve_run
from core.runs.reader import list_mhc_snapshots, load_mhc_snapshot, read_config, read_metrics, read_status


class Run:
    def __init__(self, ref: str | os.PathLike, root: str | os.PathLike | None = None):
        """``ref``: a run name in the runs folder (``root``, default ``$ST_RUNS_DIR`` or runs/) or a run folder."""
        self.path = resolve_run(ref, Path(root) if root is not None else None, allow_outside=True)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config(self) -> dict:
        """config.yaml as a nested dict: the resolved config, defaults filled in."""
        return read_config(self.path)

    @property
    def status(self) -> dict:
        """status.json, with ``state`` ``interrupted`` when its process is gone (see ``read_status``)."""
        return read_status(self.path)

    @property
    def state(self) -> str:
        return self.status["state"]

    @property
    def metrics(self):
        """metrics.jsonl as a pandas DataFrame: one row per training step (``split == "train"``) and validation."""
        return read_metrics(self.path)

    @property
    def snapshots(self) -> list[dict]:
        """The mHC snapshots by step: h_res [L, n, n], h_pre [L, n], h_post [L, n], layer_indices, step."""
        return [load_mhc_snapshot(path) for _, path in list_mhc_snapshots(self.path)]

    @property
    def evaluation(self) -> dict | None:
        """eval/metrics.json (``core.evaluate`` writes it), or None before the run is evaluated."""
        try:
            return json.loads((self.path / "eval" / "metrics.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    @property
    def predictions(self):
        """eval/predictions.h5ad (the held-out predictions of the last evaluation), or None."""
        path = self.path / "eval" / "predictions.h5ad"
        if not path.is_file():
            return None
        import anndata

        return anndata.read_h5ad(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __eq__(self, other) -> bool:
        return isinstance(other, Run) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def __repr__(self) -> str:
        status = self.status
        step, total = status.get("step"), status.get("total_steps")
        progress = f", step {step}/{total}" if step is not None and total else ""
        return f"Run({self.name!r}, {status['state']}{progress})"
