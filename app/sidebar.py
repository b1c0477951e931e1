"""The sidebar: which data set, and which of its columns mean what. Drawn by ``main.py`` on every page,
so its widgets keep their values across pages (widgets inside a page reset when the user leaves it).

Session state holds keys only: ``dataset`` (a ``DatasetRef`` of strings) and ``mapping`` (a dict of the
``ColumnMapping`` fields). Uploads are saved once, by content hash, into ``<runs>/.uploads/`` so the
training subprocess can read the same file; the user's own file is never written.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import streamlit as st

from app.cache import DEMO_DATASETS, DatasetRef, guessed_mapping, load_dataset, path_adata, upload_digest
from app.guard import shown_errors
from app.plain import plain
from core.errors import DataError

SOURCES = ("Demo data", "Upload a .h5ad file", "A .h5ad path on the server")
NONE = "(none)"


def upload_limit_mb() -> int:
    """The upload size limit in MB, as the server enforces it (``server.maxUploadSize``)."""
    return int(st.get_option("server.maxUploadSize"))


def uploads_dir() -> Path:
    from core.uploads import uploads_dir as folder

    return folder()


def _saved_upload(uploaded) -> DatasetRef:
    """Save the upload (once per content) where the trainer can read it; never unpickled, only read as
    HDF5 by anndata. The file name the user gave is shown, never used as a path."""
    from core.runs import atomic_write_bytes

    cache = st.session_state.setdefault("upload_digests", {})
    digest = cache.get(uploaded.file_id)
    path = uploads_dir() / f"{digest}.h5ad" if digest else None
    if digest is None or not path.is_file():
        data = uploaded.getvalue()
        digest = upload_digest(data)
        cache[uploaded.file_id] = digest
        path = uploads_dir() / f"{digest}.h5ad"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, data)
            try:  # keep only files anndata can read: a bad upload leaves nothing behind
                path_adata(str(path), path.stat().st_mtime)
            except Exception:
                path.unlink(missing_ok=True)
                cache.pop(uploaded.file_id, None)
                raise
            from core.uploads import evict

            evict(keep=path)  # the folder stays under ST_UPLOADS_MAX_BYTES, oldest uploads out first
    return DatasetRef("upload", str(path), f"Upload: {uploaded.name}", str(path))


def _server_path(text: str) -> DatasetRef | None:
    from core.data_roots import checked_input_path

    text = text.strip()
    if not text:
        return None
    # resolved (symlinks too) and checked against the data roots before anything is said about the file
    path = checked_input_path(text, "data file", (".h5ad",))
    return DatasetRef("path", str(path), f"File: {path.name}", str(path))


def _choose_dataset() -> DatasetRef | None:
    source = st.radio("Data source", SOURCES, key="data_source")
    if source == SOURCES[0]:
        name = st.selectbox("Demo data set", list(DEMO_DATASETS), format_func=DEMO_DATASETS.get,
                            key="demo_name")
        return DatasetRef("demo", name, DEMO_DATASETS[name], None)
    if source == SOURCES[1]:
        limit = upload_limit_mb()
        uploaded = st.file_uploader(
            f"AnnData file (.h5ad, at most {limit} MB)", type=["h5ad"], key="upload", max_upload_size=limit,
            help=f"Uploads are held in memory and limited to {limit} MB; for larger files give a path on "
                 "the server instead. The file is read as HDF5 only (nothing is unpickled).")
        st.caption(f"Upload limit: {limit} MB. Larger files: use a path on the server.")
        return _saved_upload(uploaded) if uploaded is not None else None
    text = st.text_input("Path of a .h5ad file on the server", key="server_path",
                         help="Read in backed mode (the expression matrix stays on disk); never modified.")
    return _server_path(text)


def _options_with_default(options: list[str], default, allow_none: bool) -> tuple[list[str], int]:
    options = ([NONE] if allow_none else []) + options
    index = options.index(default) if default in options else 0
    return options, index


def _mapping_widgets(ref: DatasetRef) -> dict:
    """Selectboxes for every ``ColumnMapping`` field, starting from ``guess_mapping``'s guesses. Their keys
    carry the data set's identity, so a new data set starts from its own guesses."""
    adata = load_dataset(ref)
    guess = guessed_mapping(ref)
    tag = hashlib.sha1(repr(ref).encode()).hexdigest()[:10]
    obs_columns = [str(c) for c in adata.obs.columns]
    embeddings = [k for k in adata.obsm.keys() if getattr(adata.obsm[k], "ndim", 2) == 2]

    def pick(label, field, options, allow_none=False, help=None):
        opts, index = _options_with_default(options, getattr(guess, field, None), allow_none)
        value = st.selectbox(label, opts, index=index, key=f"map_{field}_{tag}", help=help)
        return None if value == NONE else value

    pert_col = pick("Condition column", "pert_col", obs_columns, help="The obs column saying burn or sham.")
    if pert_col is None:
        raise DataError("choose the obs column that holds the condition (e.g. 'condition')")
    values = [str(v) for v in adata.obs[pert_col].astype("category").cat.categories]
    control = pick("Control value", "control_pert", values, help="The control condition (sham).")
    cell_type = pick("Cell-type column", "cell_type_key", obs_columns)
    batch = pick("Batch column", "batch_col", obs_columns, allow_none=True,
                 help="e.g. mouse_id; nested in condition for burn/sham designs.")
    embed = pick("Embedding (obsm)", "embed_key", embeddings, help="The latent space the model works in.")
    dim = adata.obsm[embed].shape[1] if embed else None
    same_shape = [k for k in embeddings if k != embed and adata.obsm[k].shape[1] == dim]
    velocity = pick("Velocity (obsm, latent)", "velocity_key", same_shape, allow_none=True,
                    help="Velocities in the same latent space as the embedding; or compute them on the "
                         "Data page.")
    numeric = [c for c in obs_columns if adata.obs[c].dtype.kind in "fiu"]
    confidence = pick("Velocity confidence (obs)", "confidence_key", numeric, allow_none=True)
    return dict(pert_col=pert_col, control_pert=control, cell_type_key=cell_type, batch_col=batch,
                embed_key=embed, velocity_key=velocity, confidence_key=confidence)


def render() -> None:
    """Draw the sidebar and publish ``st.session_state["dataset"]`` and ``["mapping"]``."""
    pending = st.session_state.pop("pending_server_path", None)
    if pending:  # a page asked to switch to a file it wrote (e.g. the data set with computed velocity)
        st.session_state["data_source"] = SOURCES[2]
        st.session_state["server_path"] = pending
    with st.sidebar:
        st.subheader("Data")
        ref = None
        with shown_errors("opening the data set"):
            ref = _choose_dataset()
        st.session_state["dataset"] = ref
        st.session_state["mapping"] = None
        if ref is None:
            st.info("Choose a data set above.")
            return
        with st.expander("Column mapping", expanded=ref.kind != "demo"):
            with shown_errors("reading the data set's columns"):
                st.session_state["mapping"] = _mapping_widgets(ref)
        if ref.kind != "demo":
            st.caption(f"Reading {plain(os.path.basename(ref.key))}; the original file is never modified.")
