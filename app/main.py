"""``streamlit run app/main.py``: the router. Five pages in ``app/views/``, the data set in the sidebar.

Every button on a page maps to one ``core`` call that the command line also makes (``python -m core``);
no training and no math happen in the views. Heavy imports (torch, scvelo) stay inside the functions
that need them, so the first page appears in a few seconds.
"""

import streamlit as st

from app import sidebar, state
from app.guard import shown_errors

st.set_page_config(page_title="Burn vs sham: ST fine-tuning with mHC and velocity",
                   page_icon=":material/biotech:", layout="wide")

PAGES = [
    st.Page("views/data.py", title="Data", icon=":material/scatter_plot:", default=True),
    st.Page("views/train.py", title="Train", icon=":material/model_training:"),
    st.Page("views/inspect.py", title="Inspect", icon=":material/grid_on:"),
    st.Page("views/compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("views/export.py", title="Export", icon=":material/download:"),
]

page = st.navigation(PAGES)
# The figures a page draws this time replace those it drew before (components.show_figure keeps them for
# the Export page, which exports them as they were last shown).
state.CURRENT_PAGE.set(page.title)
state.SHOWN_FIGURES.get()[page.title] = {}
sidebar.render()
with shown_errors(f"showing the {page.title} page"):
    page.run()
