"""The Streamlit app: a thin UI over ``core`` (run it with ``streamlit run app/main.py``)."""
