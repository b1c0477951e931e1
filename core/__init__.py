"""State Transition fine-tuning with manifold-constrained hyper-connections and RNA-velocity alignment.

The public API (``core/api.py``; plots in ``core.pl``), imported lazily so that ``import core.errors`` stays
light: ``core.load``, ``core.rna_velocity`` (``core.velocity`` is the package), ``core.train``,
``core.evaluate``, ``core.predict``, ``core.run_experiment``, ``core.export``, ``core.runs_list``, ``core.Run``.
Everything here is headless: the Streamlit app in ``app/`` and the ``python -m core`` command line are thin
layers over these modules. Nothing in ``core`` imports Streamlit.
"""

__version__ = "0.1.0"

_API = {"load", "rna_velocity", "train", "evaluate", "predict", "run_experiment", "export"}
__all__ = sorted(_API | {"Run", "pl", "runs_list"})


def __getattr__(name: str):
    # PEP 562: the API's imports (torch, scanpy) happen on first use, not on `import core.<anything>`
    if name in _API:
        from core import api

        return getattr(api, name)
    if name == "runs_list":
        from core.api import runs

        return runs
    if name == "Run":
        from core.runs.handle import Run

        return Run
    if name == "pl":
        import importlib

        return importlib.import_module("core.pl")
    raise AttributeError(f"module 'core' has no attribute {name!r}")
