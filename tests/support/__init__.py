"""What several test files share: where things are, and how to read what the app sends to the browser.

``tests/conftest.py`` puts ``tests/`` on the import path (pytest does so for a conftest's folder), so a test
imports these as ``from support import ...``.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
FIXTURES = TESTS / "fixtures"
# AppTest.from_file resolves a relative path against the test file; an absolute one works from every folder
APP = str(REPO / "app" / "main.py")
# The small model most training tests use (one CPU thread, so that parallel tests do not fight for cores); each
# file appends what its assertions depend on (steps, design, LoRA).
TINY_MODEL = ["model.kwargs.hidden_dim=32", "model.kwargs.n_layers=2", "model.kwargs.n_heads=2",
              "model.kwargs.cell_set_len=16", "training.batch_size=4", "training.accelerator=cpu",
              "training.num_threads=1"]
# The small demo's columns named, held out by cell fraction (it has too few cells for whole mice in every split).
SMALL_DEMO_KEYS = ["data.kwargs.pert_col=condition", "data.kwargs.control_pert=sham",
                   "data.kwargs.cell_type_key=cell_types_simple_short", "data.kwargs.embed_key=X_pca",
                   "data.kwargs.split=fraction"]


def assert_compiled_run_matches_eager(eager: Path, compiled: Path, steps: int) -> None:
    """A training.compile=true run folder against the eager run of the same settings: its log says it compiled,
    and it trained the same losses and weights (to the rounding of fused ops), under the same checkpoint keys."""
    from core.runs import load_checkpoint, read_metrics

    assert "compiled with torch.compile" in (compiled / "log.txt").read_text()
    losses = [read_metrics(run).query("split == 'train'")["loss"].to_numpy() for run in (eager, compiled)]
    assert len(losses[0]) == steps
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)  # fused ops round differently
    weights = [load_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"] for run in (eager, compiled)]
    assert weights[1].keys() == weights[0].keys()  # compiled in place: no _orig_mod. prefix in the checkpoint
    for key in weights[0]:
        np.testing.assert_allclose(weights[1][key].numpy(), weights[0][key].numpy(), rtol=1e-3, atol=1e-5,
                                   err_msg=key)


def unpack(node):
    """plotly 7 packs numeric arrays as {"dtype", "bdata" (base64), "shape"}; turn them back into numpy."""
    if isinstance(node, dict):
        if "bdata" in node and "dtype" in node:
            array = np.frombuffer(base64.b64decode(node["bdata"]), dtype=node["dtype"])
            shape = node.get("shape")
            return array.reshape([int(n) for n in str(shape).split(",")]) if shape else array
        return {key: unpack(value) for key, value in node.items()}
    if isinstance(node, list):
        return [unpack(value) for value in node]
    return node


def charts(at) -> dict:
    """Plotly charts of the page by title, as the JSON dicts the browser receives."""
    specs = [unpack(json.loads(c.proto.spec)) for c in at.get("plotly_chart")]
    return {s["layout"]["title"]["text"]: s for s in specs}


def unescaped(markdown: str) -> str:
    """What the user reads of a message the app escaped with ``app.plain.plain`` (a backslash before a markdown
    character is not shown): for comparing an element's ``.value`` with the words a test expects."""
    import re

    return re.sub(r"\\(.)", r"\1", markdown)


def wait_until(predicate, timeout: float = 600.0, poll: float = 0.05, what: str = "the condition") -> None:
    """Poll ``predicate`` until it holds (never sleep-and-hope); the bound only stops a hung test, so it is long
    enough for a loaded CI machine."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll)
    raise AssertionError(f"{what} never became true within {timeout:.0f} s")


PANCREAS = REPO.parent / "shared" / "data" / "pancreas_100obs.h5ad"  # real counts (scvelo's test data), shared/


def pancreas_with_pca(n_comps: int):
    """The 100 real pancreas cells with ``obsm["X_pca"]`` from their normalised, log counts (counts kept raw)."""
    import scanpy as sc

    from core.data.io import read_h5ad

    adata = read_h5ad(PANCREAS)
    norm = adata.copy()
    sc.pp.normalize_total(norm)
    sc.pp.log1p(norm)
    sc.pp.pca(norm, n_comps=n_comps)
    adata.obsm["X_pca"] = norm.obsm["X_pca"]
    return adata


def started_app(monkeypatch, runs_dir, timeout: int = 180):
    """The app run once in AppTest with its runs folder at ``runs_dir`` and its log quiet (tests read the page,
    not the log)."""
    import logging

    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("ST_RUNS_DIR", str(runs_dir))
    logging.getLogger("app").disabled = True
    at = AppTest.from_file(APP, default_timeout=timeout)
    at.run()
    return at
