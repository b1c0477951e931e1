"""The Compare page's experiment panel: run arms x seeds from a form (``python -m core experiment`` in the
background, the same command the CLI runs) and show an experiment's verdicts, tables, paired dot plots and
held-out ED against cos(dz, v_z) over λ."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from app import state
from app.components import show_figure
from app.guard import shown_errors
from core.errors import ConfigError
from core.experiment.arms import LAMBDA, PRESETS, STABILITY

ARM_CHOICES = [*PRESETS, STABILITY, LAMBDA]


def _form() -> None:
    from core.config import load_config
    from core.experiment.arms import DEFAULT_COMMON, default_name, parse_arms
    from core.experiment.launch import launch_experiment
    from core.runs import safe_run_name

    with st.form("experiment_form"):
        arms = st.multiselect("Arms (the first is the reference)", ARM_CHOICES, default=["base", "+mhc"],
                              key="experiment_arms")
        left, right = st.columns(2)
        seeds = left.number_input("Seeds per arm", min_value=1, max_value=20, value=3, key="experiment_seeds")
        name = right.text_input("Name (empty: from the arms; the same name resumes)", key="experiment_name")
        overrides = st.text_area("Settings shared by every arm, one key=value a line",
                                 placeholder="training.max_epochs=5\ndata.kwargs.split=batch",
                                 key="experiment_overrides")
        demo_base = st.checkbox("Fine-tune the demo base (model.init_from=demo)", value=True,
                                key="experiment_demo_base")
        submitted = st.form_submit_button("Run experiment", type="primary")
    if not submitted:
        return
    with shown_errors("starting the experiment"):
        if not arms:
            raise ConfigError("choose at least one arm")
        parsed = parse_arms(",".join(arms))
        shared = [line.strip() for line in overrides.splitlines() if line.strip()]
        common = [*(DEFAULT_COMMON if demo_base else ()), *shared]
        for arm in parsed:  # a typo is one line here, not a failed background process
            try:
                load_config(overrides=[*common, *arm.overrides])
            except ConfigError as err:
                raise ConfigError(f"arm {arm.name}: {err}") from None
        chosen = safe_run_name(name) if name.strip() else default_name(parsed)
        folder = launch_experiment(",".join(arms), int(seeds), chosen, shared, demo_base=demo_base)
        state.EXPERIMENT_SHOWN.set(folder.name)
        st.success(f"Started experiment {chosen}; its progress appears below.")


@st.fragment(run_every=2.0)
def _progress(folder) -> None:
    from core.experiment.launch import experiment_state, log_tail

    state = experiment_state(folder)
    st.text(f"{folder.name}: {state}")
    if state in ("running", "failed", "unknown"):
        st.code(log_tail(folder) or "(no output yet)", language=None)


def _results(folder) -> None:
    from core.figures.experiment import ed_against_velocity, paired_dots

    path = folder / "results.json"
    if not path.is_file():
        return
    results = json.loads(path.read_text(encoding="utf-8"))
    spec = results["spec"]
    st.text(f"{len(spec['arms'])} arms x {len(spec['seeds'])} seeds; design: "
            f"{'; '.join(results.get('design') or []) or 'unknown'}; {results.get('seconds', '?')} s")
    for comparison in results["comparisons"]:
        st.text(comparison["verdict"])
    rows = [{"arm": c["arm"], "reference": c["reference"], "metric": c["label"], "reference mean": c["reference_mean"],
             "arm mean": c["arm_mean"], "difference": c["mean"], "sd": c["sd"], "CI low": c["ci_low"],
             "CI high": c["ci_high"], "seeds": c["n"]} for c in results["comparisons"]]
    if rows:
        st.dataframe(pd.DataFrame(rows), key="experiment_table")
    show_figure(paired_dots(results), f"experiment_{spec['name']}_paired_dots", key="experiment_dots")
    show_figure(ed_against_velocity(results), f"experiment_{spec['name']}_ed_against_cos", key="experiment_ed_cos")
    for failure in results.get("failed", []):
        st.error(f"failed run: {failure}")


def experiment_panel() -> None:
    from core.experiment.launch import list_experiments

    st.subheader("Paired experiment: arms x seeds")
    st.caption("Every arm runs with the same seeds (hence the same splits); each run is an ordinary run in the "
               "list above. Verdicts are paired differences to the reference arm with a 95% t interval. "
               "Same as `python -m core experiment`.")
    _form()
    folders = {f.name: f for f in list_experiments()}
    if not folders:
        st.info("No experiment yet: choose arms and seeds above and run one.")
        return
    names = list(folders)
    wanted = state.EXPERIMENT_SHOWN.get()
    chosen = st.selectbox("Experiment", names, index=names.index(wanted) if wanted in names else 0,
                          key="experiment_pick")
    _progress(folders[chosen])
    with shown_errors("showing the experiment"):
        _results(folders[chosen])
