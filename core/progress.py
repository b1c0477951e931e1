"""Progress of long jobs (training, velocity, evaluation, experiments) for every front end, from one kind of event.

A job reports ``(done, total, fields)``; ``progress_bar`` turns that into a tqdm bar on a terminal, a Jupyter
widget in a notebook (tqdm.auto, when ipywidgets is installed), or nothing when the output is neither (CI, a log
file, the app's subprocesses, whose live view reads the same numbers from the run folder's status.json).
"""

from __future__ import annotations

import sys


def in_notebook() -> bool:
    """Whether this code runs in a Jupyter kernel (IPython's ZMQ shell), not a terminal IPython."""
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return type(shell).__name__ == "ZMQInteractiveShell"


def wants_progress(enabled: bool | None) -> bool:
    """``enabled`` if given; by default on in a notebook or when stderr is a terminal, off otherwise."""
    if enabled is not None:
        return bool(enabled)
    try:
        return in_notebook() or sys.stderr.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stderr
        return False


class ProgressBar:
    """``update(done, **fields)`` moves the bar to ``done`` of ``total`` and shows ``fields`` (loss, ETA...);
    without a display (``enabled`` false) it does nothing, so callers never branch on it."""

    def __init__(self, total: float | None, desc: str, unit: str = "step", enabled: bool | None = None):
        self._bar = None
        if wants_progress(enabled):
            if in_notebook():
                try:
                    import ipywidgets  # noqa: F401  (tqdm.auto needs it for the widget)
                    from tqdm.auto import tqdm
                except ImportError:
                    from tqdm import tqdm
            else:
                from tqdm import tqdm
            self._bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=True)

    @property
    def shown(self) -> bool:
        return self._bar is not None

    def update(self, done: float, total: float | None = None, **fields) -> None:
        if self._bar is None:
            return
        if total is not None and total != self._bar.total:
            self._bar.total = total
        self._bar.n = done
        if fields:
            self._bar.set_postfix({k: _short(v) for k, v in fields.items()}, refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _short(value):
    return f"{value:.4g}" if isinstance(value, float) else value
