"""The one answer to "which data set did this run use?", for training, inference, evaluation, figures and the app.

A run's ``data.kwargs`` name either a file (``path``: read, never written) or a built-in demo (``dataset``:
``burn_sham`` or ``atlas``). The demo's RNA velocity is not stored in the demo file but computed once and cached
(core.velocity.pipeline), so whether it is loaded is part of the answer: it is, whenever the burn/sham demo is
read by a run that uses velocity (``velocity_key`` set, or velocity alignment on), so every front end scores Δz
against the same v_z the trainer saw.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigError

DEMO_NAMES = ("burn_sham", "atlas")


@dataclass(frozen=True)
class RunData:
    """Where a run's cells come from: a file (``path``) or a demo (``demo``), and whether the demo's velocity
    is loaded with it. Plain strings, so it can key caches."""

    path: str | None
    demo: str | None
    with_velocity: bool

    @property
    def label(self) -> str:
        if self.path:
            return f"File: {Path(self.path).name}"
        return f"Demo: {self.demo}" + (" with RNA velocity" if self.with_velocity else "")


def _data_kwargs(source) -> dict:
    """``data.kwargs`` of a Config, of a config dict (as read from config.yaml) or the kwargs dict itself."""
    if hasattr(source, "data"):  # a Config
        return dataclasses.asdict(source.data.kwargs)
    if isinstance(source, dict) and isinstance(source.get("data"), dict):
        return dict(source["data"].get("kwargs") or {})
    return dict(source or {})


def run_data(source, need_velocity: bool | None = None) -> RunData:
    """The data set of a run from its config (a Config, a config dict, or its data.kwargs). ``need_velocity``
    forces the demo's velocity on or off; by default it is loaded when the run names a velocity key."""
    kwargs = _data_kwargs(source)
    if kwargs.get("path"):
        return RunData(str(kwargs["path"]), None, False)
    demo = kwargs.get("dataset") or "burn_sham"
    if demo not in DEMO_NAMES:
        raise ConfigError(f"data.kwargs.dataset={demo!r} is not a built-in demo; use one of {list(DEMO_NAMES)} "
                          "or give data.kwargs.path")
    wanted = bool(kwargs.get("velocity_key")) if need_velocity is None else need_velocity
    if wanted and demo != "burn_sham":
        if need_velocity:
            raise ConfigError("the demo atlas has no RNA velocity; use model.kwargs.use_velocity_alignment=false "
                              "to pretrain on it")
        wanted = False
    return RunData(None, demo, wanted)


def load_run_data(data: RunData, backed: bool = False):
    """The AnnData of ``data`` (``backed=True`` keeps a file's X on disk; the demo is always in memory)."""
    if data.path:
        from core.data.io import read_h5ad

        return read_h5ad(data.path, backed=backed)
    from core.data.demo import load_demo

    return load_demo(data.demo, with_velocity=data.with_velocity)
