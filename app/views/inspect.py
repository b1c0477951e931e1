"""Inspect page: one run's mHC mappings over training, how its predicted shifts line up with velocity, and
the genes it predicts the perturbation changes beside those observed."""

import streamlit as st

from app import cache
from app.components import run_path, run_picker, show_figure
from app.guard import shown_errors
from app.plain import plain
from core.evaluation.mhc_drift import describe_most_moved, mapping_drift, most_moved
from core.figures import mhc as mhc_figures
from core.figures.mhc_drift import drift_at_step_figure, stream_divergence_figure
from core.figures.mhc_history import training_history_figure
from core.runs import ACTIVE_STATES, list_runs, read_status

# while the run trains: new snapshots and metrics arrive every few steps, and a redraw is ~6 figures
POLL_S = 2.0
TABS = ["mHC mappings (H_res, H_pre, H_post)", "Δz vs velocity", "Genes"]

st.title("Inspect a run")
runs = list_runs()
if not runs:
    st.info("No runs yet: launch one on the Train page.")
    st.stop()
run = run_picker(runs, "Run", key="inspect_run")
# While the run trains, the page redraws itself every POLL_S (a fragment: the run picker and the sidebar are not
# redrawn); once the run has ended, one full rerun draws it a last time without a poll.
polling = run["state"] in ACTIVE_STATES


def _mhc_tab(run: dict, path) -> None:
    snapshots = cache.mhc_snapshots(path)
    if not snapshots:
        st.info("This run saved no mHC snapshots: mHC was off (turn it on in the Train form), or the run "
                "has not reached its first snapshot yet.")
        return
    name = run["name"]
    steps = [int(s["step"]) for s in snapshots]
    step = steps[0] if len(steps) == 1 else st.select_slider(
        "Training step of the snapshot", options=steps, value=steps[-1], key="inspect_step")
    snapshot = snapshots[steps.index(step)]
    # Related panels share a figure (5 charts, not 9): the browser's cost of this tab grows with its charts.
    show_figure(mhc_figures.h_res_heatmaps(snapshot), f"{name}_h_res_step{step}", key="h_res")
    show_figure(mhc_figures.step_summary_figure(snapshot), f"{name}_h_res_sum_error_and_gain_step{step}",
                key="step_summary")
    show_figure(mhc_figures.h_pre_post_bars(snapshot), f"{name}_h_pre_post_step{step}", key="pre_post")
    st.subheader("How far mHC has moved from its init")
    drift, at = mapping_drift(snapshots), steps.index(step)
    if at > 0:  # at the first snapshot every change is zero by definition
        st.info(plain(describe_most_moved(most_moved(drift, at))))
        show_figure(drift_at_step_figure(drift, at), f"{name}_drift_step{step}", key="drift_at_step")
    show_figure(training_history_figure(snapshots, drift, cache.run_metrics(path)), f"{name}_mhc_over_training",
                key="mhc_history")
    if st.toggle("Measure how far the streams have diverged (a forward pass of the best checkpoint and of "
                 "the init on validation control cells)", key="inspect_divergence"):
        with shown_errors("measuring the streams' divergence"):
            show_figure(stream_divergence_figure(cache.stream_divergence(path)),
                        f"{name}_stream_divergence", key="divergence")


@st.fragment(run_every=POLL_S if polling else None)
def _page(run: dict) -> None:
    status = read_status(run["path"])
    if polling and status["state"] not in ACTIVE_STATES:
        st.rerun()  # the whole page, so the fragment is made again without run_every
    run = {**run, "status": status, "state": status["state"]}
    path = run_path(run)
    st.caption(f"State: **{run['state']}**" + (f": {plain(status.get('message'))}" if status.get("message") else ""))

    # Only the open tab is drawn (a tab switch reruns the page): drawing both doubled the page switch.
    mhc_tab, velocity_tab, genes_tab = st.tabs(TABS, key="inspect_tab", on_change="rerun")

    if mhc_tab.open:
        with mhc_tab, shown_errors("drawing the mHC mappings"):
            _mhc_tab(run, path)

    if velocity_tab.open:
        with velocity_tab, shown_errors("drawing Δz against velocity"):
            from app.panels.delta import delta_panel

            delta_panel(run)

    if genes_tab.open:
        with genes_tab, shown_errors("drawing the genes"):
            from app.panels.genes import genes_panel

            genes_panel(run)


_page(run)
