"""Live view of the runs folder: every run's state, and one run's progress and curves, polled while any run
is active. The poll interval stays constant while a run exists (toggling it from inside the fragment left
the page stale in trials), and the app re-attaches to running jobs after a reload by reading the folder."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import streamlit as st

from app import cache, state
from app.components import run_picker, show_figure
from app.guard import shown_errors
from app.plain import plain
from app.run_actions import run_actions

POLL_S = 1.0
ACTIVE = ("queued", "running")


def _duration(seconds) -> str:
    if seconds is None or not pd.notna(seconds):
        return "—"
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def runs_table(runs: list[dict]) -> pd.DataFrame:
    from core.runs.admin import read_tags

    rows = []
    for run in runs:
        status, config = run["status"], run["config"]
        total = status.get("total_steps")
        rows.append({
            "run": run["name"],
            "state": run["state"],
            "progress": float(status.get("progress") or 0.0),
            # before training starts the number of steps is not known yet: say so rather than "0/?"
            "step": f"{status.get('step') or 0}/{total}" if total else "not started",
            # LoRA needs a base: a from-scratch run trains every weight, whatever lora.enable says
            "LoRA": bool(config.get("model.kwargs.lora.enable") and config.get("model.init_from"))
            if config else None,
            "mHC": config.get("model.kwargs.use_mhc"),
            "velocity": config.get("model.kwargs.use_velocity_alignment"),
            "seed": config.get("training.seed"),
            "tags": ", ".join(read_tags(run["path"])),
            "device": status.get("device"),
            "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(run["created"])) if run["created"]
            else "",
        })
    return pd.DataFrame(rows).set_index("run")


def _log_tail(run_dir: Path, lines: int = 30) -> str:
    try:
        text = (run_dir / "log.txt").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log.txt)"
    return "\n".join(text.strip().splitlines()[-lines:])


def _status_block(run: dict) -> None:
    from core.runs import cancel_run

    status, state, path = run["status"], run["state"], Path(run["path"])
    if state in ACTIVE:
        progress = float(status.get("progress") or 0.0)
        text = (f"{state}: step {status.get('step') or 0} of {status.get('total_steps') or '?'} · "
                f"ETA {_duration(status.get('eta_s'))}")
        if status.get("device"):
            text += f" · {status['device']}"
        if status.get("message"):
            text += f" · {status['message']}"
        st.progress(min(max(progress, 0.0), 1.0), text=text)
        if st.button("Cancel this run", key=f"cancel_{run['name']}"):
            final = cancel_run(path)
            st.warning(f"{plain(run['name'])} is {final['state']}; what it saved is kept.")
    elif state == "completed":
        took = (status.get("ended") or 0) - (status.get("started") or status.get("created") or 0)
        st.success(f"{plain(run['name'])} completed in {_duration(took)}. Inspect it or compare it with other runs.")
    elif state == "failed":
        message = status.get("message") or "no message recorded; see the log below"
        st.error(f"{plain(run['name'])} failed: {plain(message)}")
        if run["config"]:
            with st.expander("Settings of the failed run"):
                st.dataframe(pd.DataFrame({"value": [str(v) for v in run["config"].values()]},
                                          index=list(run["config"])), key=f"failed_config_{run['name']}")
    elif state == "interrupted":
        st.warning(f"{plain(run['name'])} was interrupted ({plain(status.get('message', ''))}). Its last checkpoint is "
                   f"kept; see how to resume it: `python -m core runs resume-info {run['name']}`.")
    else:
        st.info(f"{plain(run['name'])} is {state}. {plain(status.get('message') or '')}")
    from core.evaluation.run_warnings import run_warnings

    for warning in run_warnings(run["config"], status, cache.run_metrics(path)):
        st.warning(plain(warning))
    if state in ("failed", "interrupted", "cancelled"):
        with st.expander("Last lines of the run's log"):
            st.code(_log_tail(path), language="text")


def _live() -> None:
    from core.figures import training
    from core.runs import list_runs

    runs = list_runs()
    if not runs:
        st.info("No runs yet: fill in the form above and launch one.")
        return
    progress = st.column_config.ProgressColumn("progress", min_value=0, max_value=1)
    st.dataframe(runs_table(runs), key="runs_table", column_config={"progress": progress})
    active = [r["name"] for r in runs if r["state"] in ACTIVE]
    if active and state.SELECTED_RUN.get() not in [r["name"] for r in runs]:
        state.SELECTED_RUN.set(active[0])
    run = run_picker(runs, "Run to watch", key="train_run")
    _status_block(run)

    metrics = cache.run_metrics(run["path"])
    c1, c2 = st.columns([1, 3])
    log_y = c1.toggle("Log-scale loss", value=True, key="train_log_y")
    # the default follows the run's length (keyed by it, so another run gets its own default)
    total = run["status"].get("total_steps") or (int(metrics["step"].max()) + 1 if "step" in metrics
                                                 and len(metrics) else None)
    default = training.default_smoothing(total)
    smoothing = c2.slider("Smoothing (exponential moving average weight)", 0.0, 0.99, default,
                          key=f"train_smooth_{run['name']}_{default}",
                          help=f"Default {default} for a run of {total or 'unknown'} steps: the smoothed curve "
                               "lags by about 1/(1 − weight) steps.")
    # remembered beyond this page's widgets, so the Export page writes the figures as they are shown here
    state.RUN_VIEW.set({"run": run["name"], "log_y": log_y, "smoothing": smoothing})
    velocity = run["config"].get("model.kwargs.use_velocity_alignment")
    figures = training.training_figures(metrics, log_y=log_y, smoothing=smoothing, velocity=velocity)
    show_figure(figures["loss"], f"{run['name']}_loss", key="train_loss")
    left, right = st.columns(2)
    with left:
        show_figure(figures["grad_norm"], f"{run['name']}_grad_norm", key="train_grad_norm")
        show_figure(figures["lambda_t"], f"{run['name']}_lambda_t", key="train_lambda")
    with right:
        show_figure(figures["cos_delta_z_v_z"], f"{run['name']}_cos_delta_z_v_z", key="train_cos")


def run_monitor() -> None:
    from core.runs import list_runs

    any_active = any(r["state"] in ACTIVE for r in list_runs())

    @st.fragment(run_every=POLL_S if any_active else None)
    def live():
        with shown_errors("showing the runs"):
            _live()

    live()
    runs = {r["name"]: r for r in list_runs()}
    run_actions(runs.get(state.SELECTED_RUN.get()))
