"""Train page: set up a fine-tune in one form, launch it as a background process, watch it live."""

import streamlit as st

from app.guard import shown_errors
from app.panels.run_monitor import run_monitor
from app.panels.train_form import train_form

st.title("Train")
st.caption("Each launch runs `python -m core train …` in its own process, writing to the runs folder; "
           "several can run at once, and they keep running if you close the browser.")

with shown_errors("launching the run"):
    train_form()

st.divider()
st.subheader("Runs")
run_monitor()
