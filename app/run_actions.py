"""Buttons that look after one run: resume, tag, clone with changes, delete. Each is one ``core`` call that
``python -m core runs resume|tag|clone|delete`` also makes. Drawn outside the live fragment, so typing a
tag or a change is not interrupted by the 1 s poll.

Each call runs in the button's callback, before the page is drawn, so the runs table above already shows
its result; the outcome is kept as one message in ``state.RUN_ACTION`` and shown here."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import state
from app.guard import show_error

RESUMABLE = ("failed", "interrupted", "cancelled")


def _do(doing: str, call) -> None:
    """Run ``call`` (returns the success message) and keep its outcome for the next draw."""
    try:
        state.RUN_ACTION.set(("success", call()))
    except Exception as err:  # shown by show_error as one line (a bug of ours goes to the log)
        state.RUN_ACTION.set(("error", (doing, err)))


def _resume(run: dict) -> str:
    from core.runs import resume_run

    resume_run(Path(run["path"]))
    state.SELECTED_RUN.set(run["name"])
    return f"{run['name']} is resuming; it updates above."


def _save_tags(run: dict) -> str:
    from core.runs.admin import set_tags

    saved = set_tags(run["path"], state.RUN_TAGS.get(run["name"], default="").split(","))
    return f"Tags of {run['name']}: {', '.join(saved) or 'none'}."


def _clone(run: dict) -> str:
    from core.runs.admin import clone_run

    changes = state.CLONE_CHANGES.get(run["name"], default="").splitlines()
    new = clone_run(run["path"], changes, state.CLONE_NAME.get(run["name"], default=""))
    state.SELECTED_RUN.set(new.name)
    return f"Launched {new.name} with the settings of {run['name']} and your changes."


def _delete(run: dict) -> str:
    from core.runs.admin import delete_run

    delete_run(run["path"])
    state.SELECTED_RUN.pop()
    return f"Deleted {run['name']}."


def _outcome() -> None:
    outcome = state.RUN_ACTION.pop()
    if outcome is None:
        return
    kind, payload = outcome
    if kind == "success":
        st.success(payload)
    else:
        show_error(payload[1], payload[0])


def run_actions(run: dict | None) -> None:
    from core.runs.admin import read_tags

    _outcome()
    if run is None:
        return
    name = run["name"]
    with st.expander(f"Manage {name}: resume, tag, clone with changes, delete"):
        if run["state"] in RESUMABLE and run["config"]:
            st.button("Resume from its last checkpoint", key=f"resume_{name}", on_click=_do,
                      args=("resuming the run", lambda: _resume(run)))
        elif run["state"] in RESUMABLE:
            st.caption("This run stopped before it wrote its settings, so it cannot be resumed; launch it again.")
        st.text_input("Tags (comma-separated)", value=", ".join(read_tags(run["path"])), key=state.RUN_TAGS.key(name),
                      help="Short labels, e.g. baseline, best so far; shown in the runs table.")
        st.button("Save tags", key=f"save_tags_{name}", on_click=_do,
                  args=("saving the tags", lambda: _save_tags(run)))
        if run["config"]:
            st.text_area("Changes, one key=value a line (the rest is copied from this run)",
                         key=state.CLONE_CHANGES.key(name), placeholder="training.seed=1\nmodel.kwargs.use_mhc=true")
            st.text_input("Name of the clone", value=f"{name}-clone", key=state.CLONE_NAME.key(name))
            st.button("Launch the clone", key=f"clone_{name}", on_click=_do,
                      args=("cloning the run", lambda: _clone(run)))
        sure = st.checkbox(f"Delete {name} and everything in its folder (checkpoints, metrics, evaluation)",
                           key=f"delete_sure_{name}")
        st.button("Delete this run", key=f"delete_{name}", disabled=not sure, on_click=_do,
                  args=("deleting the run", lambda: _delete(run)))
