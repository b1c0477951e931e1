"""Figure builders: pure functions from arrays and tables to plotly figures, shared by the app and the CLI.

One module per subject (``training``, ``mhc``, ``velocity``, ``compare``), the look in ``style``, files in
``export``. Nothing here imports streamlit; heavy inputs (AnnData, run folders) are read by the callers.
"""
