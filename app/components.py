"""Pieces several pages share: a figure with its downloads, the run picker, the current data set."""

from __future__ import annotations

import re
from pathlib import Path

import streamlit as st

from app import state
from app.cache import load_dataset

FORMAT_LABELS = {"png": "PNG (2× scale)", "svg": "SVG (vector)", "html": "HTML (interactive)"}


def show_figure(fig, name: str, key: str | None = None) -> None:
    """Draw a plotly figure as it will print (``theme=None``), with PNG, SVG and HTML downloads.

    The files are made only when a button is clicked (deferred downloads), so a page with many figures
    stays fast.
    """
    from core.figures import export

    key = key or name
    st.plotly_chart(fig, theme=None, key=f"chart_{key}", width="stretch")
    page = state.CURRENT_PAGE.get()
    if page:  # as shown (log axes, colours, smoothing): the Export page offers it in this form
        state.SHOWN_FIGURES.get().setdefault(page, {})[name] = fig
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    with st.popover("Download figure", width="content"):
        for fmt, label in FORMAT_LABELS.items():
            st.download_button(label, data=lambda fmt=fmt: export.figure_bytes(fig, fmt),
                               file_name=f"{safe}.{fmt}", mime=export.MIME[fmt], key=f"dl_{key}_{fmt}",
                               on_click="ignore")


def current_data():
    """(ref, adata, mapping) of the data set chosen in the sidebar, or stop the page with a hint."""
    ref = state.DATASET.get()
    mapping = state.MAPPING.get()
    if ref is None:
        st.info("Choose a data set in the sidebar.")
        st.stop()
    adata = load_dataset(ref)
    return ref, adata, mapping


def run_picker(runs: list[dict], label: str, key: str) -> dict | None:
    """A selectbox of runs whose choice is shared by every page (``state.SELECTED_RUN``)."""
    if not runs:
        return None
    names = [r["name"] for r in runs]
    wanted = state.SELECTED_RUN.get()
    if wanted in names and state.widget_value(key) != wanted:
        # Another page or a launch chose a run: show it, even if this selectbox remembers another.
        state.set_widget_value(key, wanted)

    def remember():
        state.SELECTED_RUN.set(state.widget_value(key))

    states = {r["name"]: r["state"] for r in runs}
    name = st.selectbox(label, names, key=key, on_change=remember, format_func=lambda n: f"{n}  ({states[n]})")
    state.SELECTED_RUN.set(name)
    return next(r for r in runs if r["name"] == name)


def run_path(run: dict) -> Path:
    return Path(run["path"])
