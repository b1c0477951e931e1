"""State Transition fine-tuning with manifold-constrained hyper-connections and RNA-velocity alignment.

Everything here is headless: the Streamlit app in ``app/`` and the ``python -m core`` command line
are thin layers over these modules. Nothing in ``core`` imports Streamlit.
"""

__version__ = "0.1.0"
