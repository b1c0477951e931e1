"""Errors reach the user as one ``st.error`` saying what to do; the app keeps running.

A ``UserError`` (bad file, bad value, missing run) is shown as its own one-line message. Anything else is
a bug of ours: the user gets a plain sentence, the traceback goes to the server log (not the page).
Streamlit's control-flow exceptions (rerun, stop, page switch) derive from ``BaseException`` and pass.
"""

from __future__ import annotations

import contextlib
import logging

import streamlit as st

from app.plain import plain
from core.errors import UserError

log = logging.getLogger("app")


def show_error(err: Exception, doing: str) -> None:
    if isinstance(err, UserError):
        st.error(plain(err), icon=":material/warning:")  # messages quote user strings: shown as text
        return
    log.exception("unexpected error while %s", doing)
    st.error(f"Something went wrong while {doing} ({type(err).__name__}: {plain(err)}). The details are in the "
             "server log; try again, or report it with that log if it happens again.",
             icon=":material/error:")


@contextlib.contextmanager
def shown_errors(doing: str):
    """Run a block; any exception becomes an ``st.error`` and the rest of the page still renders."""
    try:
        yield
    except Exception as err:
        show_error(err, doing)
