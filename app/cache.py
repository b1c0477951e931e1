"""Cached wrappers around ``core`` loaders: heavy results are computed once per input, then shared.

AnnData and other large objects go through ``st.cache_resource`` (no copy per rerun; callers treat them
as read-only), keyed by the data set's identity (demo name, upload digest, or path + modification time).
Small tables derived from files that grow during a run (metrics) are keyed by the file's size and
modification time, so a poll re-reads only what changed. torch and scvelo are imported inside functions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st

from core.errors import DataError

DEMO_DATASETS = {
    "burn_sham": "Demo: burn vs sham (synthetic, with known truth)",
    "burn_sham:velocity": "Demo: burn vs sham, with scvelo velocity (computed once, then cached)",
    "atlas": "Demo pretraining atlas (12 synthetic perturbations)",
}


@dataclass(frozen=True)
class DatasetRef:
    """Which data set the app is looking at; plain strings, so it can key caches and session state."""

    kind: str                       # "demo" | "upload" | "path"
    key: str                        # demo name | path of the saved upload | resolved server path
    label: str                      # shown to the user
    train_path: str | None = None   # the file the trainer reads (None: the trainer's built-in demo)


def mapping_key(mapping) -> tuple:
    """A hashable, order-stable form of a ``ColumnMapping`` (for cache keys)."""
    fields = dataclasses.asdict(mapping) if dataclasses.is_dataclass(mapping) else dict(vars(mapping))
    return tuple(sorted(fields.items()))


def upload_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------------------------- data sets


# said in the main area (app/sidebar.py): the first start generates the demo, which takes minutes
@st.cache_resource(show_spinner="Loading the demo data set… The first time it is generated, then cached "
                                "(a few minutes).", max_entries=3)
def demo_adata(name: str):
    """``burn_sham``, ``atlas``, or ``burn_sham:velocity`` (adds obsm["velocity_pca"] and
    obs["velocity_confidence"] from core.velocity, as training with velocity alignment does)."""
    from core.data.demo import load_demo

    base, _, extra = name.partition(":")
    return load_demo(base, with_velocity=extra == "velocity")


@st.cache_resource(show_spinner="Reading the file on the server…", max_entries=2)
def path_adata(path: str, mtime: float):
    from core.data.io import read_h5ad

    # backed, sparse layers too: X and the counts stay on disk; obs and obsm (what the app plots) load into
    # memory. Reading every layer made a 100,000-cell file take seconds and 1.7 GB before anything was drawn.
    return read_h5ad(path, backed=True, lazy_layers=True)


def load_dataset(ref: DatasetRef):
    if ref.kind == "demo":
        return demo_adata(ref.key)
    if ref.kind in ("upload", "path"):  # uploads are saved by content hash, then read like any file
        if not os.path.isfile(ref.key):
            raise DataError(f"the file {ref.key} is gone; choose the data set again in the sidebar")
        return path_adata(ref.key, os.path.getmtime(ref.key))
    raise DataError(f"unknown data source {ref.kind!r}")


@st.cache_resource(max_entries=8)
def guessed_mapping(ref: DatasetRef):
    from core.data.mapping import guess_mapping

    return guess_mapping(load_dataset(ref))


@st.cache_resource(max_entries=16)
def validation_report(ref: DatasetRef, mapping_fields: tuple, set_size: int | None,
                      base_embedding: dict | None = None):
    """``core.data.validate.validate`` against the Train settings: cells per set and the base's embedding."""
    from core.data.mapping import ColumnMapping
    from core.data.validate import validate

    return validate(load_dataset(ref), ColumnMapping(**dict(mapping_fields)), set_size=set_size,
                    base_embedding=base_embedding)


@st.cache_resource(max_entries=16)
def summary(ref: DatasetRef, mapping_fields: tuple):
    from core.data.mapping import ColumnMapping
    from core.data.summary import summary_table

    return summary_table(load_dataset(ref), ColumnMapping(**dict(mapping_fields)))


@st.cache_resource(max_entries=8)
def latent_neighbours(ref: DatasetRef, embed_key: str, sampled: bool = False):
    """Each cell's nearest cells in the embedding; with ``sampled``, among the cells ``arrow_rows`` picks."""
    from core.figures.arrows import latent_neighbours as neighbours

    latent = load_dataset(ref).obsm[embed_key]
    return neighbours(np.asarray(latent)[arrow_rows(len(latent))] if sampled else latent)


# The Data page's velocity arrows and streamlines come from at most this many cells. Their kNN graph is what
# costs: 44 s for all 100,008 cells of the bench file (50-d, 2 cores), ~2 s for 20,000; the grid-averaged and
# stream views look the same from a sample this size.
MAX_ARROW_CELLS = 20_000


def arrow_rows(n_cells: int):
    """The cells (sorted indices) the Data page's arrows are projected for: all, or a fixed random sample."""
    from core.figures.style import subsample_index

    return subsample_index(n_cells, MAX_ARROW_CELLS, seed=0)


@st.cache_resource(max_entries=16)
def projected_arrows(ref: DatasetRef, embed_key: str, vector_key: str, basis_key: str,
                     vector_source: str = "obsm"):
    """(rows, arrows [len(rows), 2]): latent vectors of one obsm key (or of a computed velocity) drawn on a
    2-D basis for the cells ``arrow_rows`` picks, with neighbours among those cells (cached)."""
    from core.figures.arrows import project_to_2d

    adata = load_dataset(ref)
    if vector_source == "computed":
        vectors = computed_velocity_vectors(ref, vector_key)
    else:
        vectors = adata.obsm[vector_key]
    rows = arrow_rows(adata.n_obs)
    latent = np.asarray(adata.obsm[embed_key])[rows]
    arrows = project_to_2d(latent, np.asarray(vectors)[rows], np.asarray(adata.obsm[basis_key])[rows, :2],
                           neighbours=latent_neighbours(ref, embed_key, sampled=True))
    return rows, arrows


@st.cache_data(max_entries=16, show_spinner=False)
def gene_expression(ref: DatasetRef, gene: str):
    """One gene's values in X for every cell (one column read, also from a file in backed mode)."""
    import numpy as np
    import scipy.sparse

    adata = load_dataset(ref)
    if gene not in adata.var_names:
        raise DataError(f"no gene {gene!r} in this data set's var_names")
    column = adata[:, [gene]].X
    column = column.toarray() if scipy.sparse.issparse(column) else np.asarray(column)
    return column.ravel().astype(np.float32)


# ------------------------------------------------------------------------------------ computed velocity


class _ComputedVelocities:
    """Velocities computed on the Data page, shared by every session of this server (at most ``size``, oldest
    dropped first). Sessions are threads of one process, hence the lock."""

    def __init__(self, size: int = 4):
        self.size, self._lock, self._items = size, threading.Lock(), {}

    def get(self, key):
        with self._lock:
            return self._items.get(key)

    def put(self, key, value) -> None:
        with self._lock:
            self._items.pop(key, None)
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.pop(next(iter(self._items)))


@st.cache_resource
def _computed() -> _ComputedVelocities:
    return _ComputedVelocities()


def computed_velocity_vectors(ref: DatasetRef, params_key: str):
    result = _computed().get((ref, params_key))
    if result is None:
        raise DataError("velocity has not been computed for this data set yet; compute it on the Data page")
    return result["velocity"]


def computed_velocity(ref: DatasetRef, params_key: str) -> dict | None:
    return _computed().get((ref, params_key))


def store_computed_velocity(ref: DatasetRef, params_key: str, result: dict) -> None:
    """Keep a velocity computed on the Data page for every session of this server."""
    _computed().put((ref, params_key), result)


# ----------------------------------------------------------------------------------------------- runs


def _stamp(path: Path) -> tuple[int, float]:
    try:
        stat = path.stat()
        return stat.st_size, stat.st_mtime
    except OSError:
        return 0, 0.0


@st.cache_data(max_entries=64, show_spinner=False)
def _metrics(run_path: str, stamp: tuple):
    from core.runs import read_metrics

    return read_metrics(run_path)


def run_metrics(run_path: Path):
    """The run's metrics table, re-read only when metrics.jsonl changed."""
    return _metrics(str(run_path), _stamp(Path(run_path) / "metrics.jsonl"))


@st.cache_resource(max_entries=32, show_spinner=False)
def _snapshot(path: str, stamp: tuple):
    from core.runs import load_mhc_snapshot

    return load_mhc_snapshot(path)


def mhc_snapshots(run_path: Path) -> list[dict]:
    from core.runs import list_mhc_snapshots

    return [_snapshot(str(p), _stamp(p)) for _, p in list_mhc_snapshots(run_path)]


@st.cache_resource(max_entries=8, show_spinner="Running the model on validation control cells…")
def _stream_divergence(run_path: str, stamp: tuple):
    from core.evaluation.mhc_drift import run_stream_divergence

    return run_stream_divergence(run_path)


def stream_divergence(run_path: Path) -> dict:
    """``core.evaluation.mhc_drift.run_stream_divergence`` of the run, re-run only when its checkpoints change."""
    return _stream_divergence(str(run_path), _stamp(Path(run_path) / "checkpoints"))


@st.cache_resource(max_entries=4, show_spinner="Reading the run's predictions…")
def _predictions(path: str, stamp: tuple):
    import anndata

    return anndata.read_h5ad(path)


def run_predictions(run_path: Path):
    """eval/predictions.h5ad of a run (read-only), or None before the run is evaluated."""
    path = Path(run_path) / "eval" / "predictions.h5ad"
    return _predictions(str(path), _stamp(path)) if path.is_file() else None


# The Data page's velocity figures take 1-3 s to build on 20,000 cells (the streamlines are integrated by
# matplotlib's streamplot), and the page reruns on every widget change and page switch: build each once per
# input (Streamlit hashes the arrays and tables it is given), not on every rerun.
@st.cache_resource(max_entries=8, show_spinner=False)
def velocity_arrows_figure(coords, arrow_fields: dict, **options):
    from core.figures.velocity import arrows_figure

    return arrows_figure(coords, arrow_fields, **options)


@st.cache_resource(max_entries=8, show_spinner=False)
def velocity_stream_figure(coords, arrows, groups, colour_values, colour_name: str, **options):
    from core.figures.stream import stream_figure

    return stream_figure(coords, arrows, groups, colour_values, colour_name, **options)
