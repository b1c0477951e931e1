"""A run's evaluation as the CLI prints it: metrics down, the model (best and final checkpoint), every
baseline and the real-vs-real floor across, the best entry of each row highlighted and named in a
``best`` column (so it does not depend on colour), the design in words and its warnings."""

from __future__ import annotations

import streamlit as st

from core.evaluation.table import metric_frame, unavailable_lines

HIGHLIGHT = "background-color: #cfe8d6; font-weight: bold"


def evaluation_panel(summary: dict) -> None:
    design = summary.get("design") or {}
    if design.get("description"):
        st.text(f"Design: {design['description']}")
    for warning in design.get("warnings", []):
        st.warning(warning)
    frame, best = metric_frame(summary)
    frame.insert(1, "best", best)

    def highlight(row):
        winner = frame.loc[row.name, "best"]
        return [HIGHLIGHT if column == winner else "" for column in row.index]

    st.dataframe(frame.style.apply(highlight, axis=1).format(precision=4, na_rep="–"), key="evaluation_table")
    st.caption("Mean over held-out cell types. Best: the model or a baseline (each fitted on the training split); "
               "the real/real floor, one half of the real cells against the other, is the distance noise alone "
               "gives and is never 'best'.")
    for line in unavailable_lines(summary):
        st.text(line)
