"""Compare page: what differs between runs, how their curves and stability compare, across seeds."""

import pandas as pd
import streamlit as st

from app import cache
from app.components import show_figure
from app.experiment_panel import experiment_panel
from app.guard import shown_errors
from core.evaluation import seed_summary, stability_summary
from core.figures import compare as compare_figures
from core.figures import training as training_figures
from core.figures.run import evaluation_table, read_evaluation
from core.runs import list_runs

st.title("Compare runs")
runs = {r["name"]: r for r in list_runs()}
if len(runs) < 1:
    st.info("No runs yet: launch some on the Train page (e.g. ST-LoRA with and without mHC), or run a paired "
            "experiment below.")
    experiment_panel()
    st.stop()

finished = [n for n, r in runs.items() if r["state"] == "completed"]
default = (finished or list(runs))[:4]
chosen = st.multiselect("Runs to compare", list(runs), default=default, key="compare_runs")
if not chosen:
    st.info("Pick at least one run.")
    experiment_panel()
    st.stop()

configs = {n: runs[n]["config"] for n in chosen}
metrics = {n: cache.run_metrics(runs[n]["path"]) for n in chosen}

st.subheader("Settings that differ, and evaluation metrics")
with shown_errors("building the comparison table"):
    diff = compare_figures.config_diff(configs)
    evaluation = evaluation_table({n: runs[n]["path"] for n in chosen})
    table = diff.join(evaluation, how="left") if not evaluation.empty else diff
    table.insert(0, "state", [runs[n]["state"] for n in table.index])
    st.dataframe(table, key="compare_table")
    if evaluation.empty:
        st.caption("No chosen run is evaluated yet: evaluate runs on the Inspect page to add their metrics.")
    elif len(diff.columns) == 0 and len(chosen) > 1:
        st.caption("The chosen runs have the same settings.")

groups = compare_figures.group_by_configuration(configs)
evaluations = {n: (read_evaluation(runs[n]["path"]) or {}).get("overall", {}).get("model") for n in chosen}
evaluations = {n: e for n, e in evaluations.items() if e}
if evaluations:
    st.subheader("Evaluation per configuration (mean ± s.d. over seeds; ★ best)")
    with shown_errors("summarising the evaluations over seeds"):
        st.dataframe(seed_summary.formatted(seed_summary.per_configuration(evaluations, groups)),
                     key="compare_seed_metrics")
        st.caption("↓: lower is better, ↑: higher is better, → 1: closest to 1 is best. A configuration is "
                   "the runs whose settings differ only by seed.")

st.subheader("Curves")
numeric = sorted({c for m in metrics.values() for c in m.columns
                  if c not in ("split", "step", "epoch") and pd.api.types.is_numeric_dtype(m[c])})
preferred = [c for c in ("loss", "dist_loss", "val_loss", "grad_norm", "cos_similarity") if c in numeric]
c1, c2, c3 = st.columns([2, 1, 1])
column = c1.selectbox("Quantity", numeric or ["loss"], index=numeric.index(preferred[0]) if preferred else 0,
                      key="compare_column")
longest = max((int(m["step"].max()) + 1 for m in metrics.values() if "step" in m and len(m)), default=None)
default_smoothing = training_figures.default_smoothing(longest)
smoothing = c2.slider("Smoothing", 0.0, 0.99, default_smoothing, key=f"compare_smoothing_{default_smoothing}")
# per quantity: losses and gradient norms span decades (log), cosines and λ_t are signed or bounded (linear,
# where a log axis would hide every negative value)
log_y = c3.toggle("Log y", value=column in compare_figures.LOG_BY_DEFAULT, key=f"compare_log_{column}")
with shown_errors("drawing the curves"):
    show_figure(compare_figures.overlaid_curves(metrics, column, smoothing, log_y), f"compare_{column}",
                key="overlaid")

if any(len(names) > 1 for names in groups.values()):
    with shown_errors("drawing the seed spread"):
        show_figure(compare_figures.seed_band_curves(metrics, groups, column, smoothing, log_y),
                    f"compare_{column}_seeds", key="seed_band")
else:
    st.caption("Each configuration has a single seed; launch the same settings with other seeds "
               "(Train page, 'Seed') to see mean ± spread.")

st.subheader("Training stability")
with shown_errors("summarising training stability"):
    stability = pd.DataFrame({n: stability_summary(m) for n, m in metrics.items()}).T
    show_figure(compare_figures.stability_figure(stability, groups), "compare_stability", key="stability")
    st.dataframe(stability[["n_steps", "grad_norm_p50", "grad_norm_p95", "grad_norm_max", "loss_spikes",
                            "peak_loss_ratio", "nonfinite_losses"]], key="stability_table")

experiment_panel()
