"""The sidebar: which data set, and which of its columns mean what. Drawn by ``main.py`` on every page,
so its widgets keep their values across pages (widgets inside a page reset when the user leaves it).

Session state holds keys only: ``state.DATASET`` (a ``DatasetRef`` of strings) and ``state.MAPPING`` (a dict
of the ``ColumnMapping`` fields). Uploads are saved once, by content hash, into ``<runs>/.uploads/`` so the
training subprocess can read the same file; the user's own file is never written.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import streamlit as st

from app import state, url_state
from app.cache import DEMO_DATASETS, DatasetRef, guessed_mapping, load_dataset, path_adata, upload_digest
from app.guard import show_error, shown_errors
from core.errors import DataError

SOURCES = ("Demo data", "Upload a .h5ad file", "A .h5ad path on the server")
NONE = "(none)"


def upload_limit_mb() -> int:
    """The upload size limit in MB, as the server enforces it (``server.maxUploadSize``)."""
    return int(st.get_option("server.maxUploadSize"))


def uploads_dir() -> Path:
    from core.runs.uploads import uploads_dir as folder

    return folder()


def _saved_upload(uploaded) -> DatasetRef:
    """Save the upload (once per content) where the trainer can read it; never unpickled, only read as
    HDF5 by anndata. The file name the user gave is shown, never used as a path."""
    from core.io.atomic import atomic_write_bytes

    cache = state.UPLOAD_DIGESTS.get()
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
            except Exception as err:
                path.unlink(missing_ok=True)
                cache.pop(uploaded.file_id, None)
                if isinstance(err, DataError):  # name the user's file, not our content-hash copy of it
                    text = str(err).replace(str(path), uploaded.name).replace(path.name, uploaded.name)
                    raise DataError(text) from err
                raise
            from core.runs.uploads import evict

            evict(keep=path)  # the folder stays under ST_UPLOADS_MAX_BYTES, oldest uploads out first
    return DatasetRef("upload", str(path), f"Upload: {uploaded.name}", str(path))


def _server_path(text: str) -> DatasetRef | None:
    from core.data.roots import checked_input_path

    text = text.strip()
    if not text:
        return None
    # resolved (symlinks too) and checked against the data roots before anything is said about the file
    path = checked_input_path(text, "data file", (".h5ad",))
    return DatasetRef("path", str(path), f"File: {path.name}", str(path))


def _choose_dataset() -> DatasetRef | None:
    source = st.radio("Data source", SOURCES, key=state.DATA_SOURCE.name)
    if source == SOURCES[0]:
        name = st.selectbox("Demo data set", list(DEMO_DATASETS), format_func=DEMO_DATASETS.get,
                            key=state.DEMO_NAME.name)
        return DatasetRef("demo", name, DEMO_DATASETS[name], None)
    if source == SOURCES[1]:
        limit = upload_limit_mb()
        uploaded = st.file_uploader(
            f"AnnData file (.h5ad, at most {limit} MB)", type=["h5ad"], key="upload", max_upload_size=limit,
            help=f"Uploads are held in memory and limited to {limit} MB; for larger files give a path on "
                 "the server instead. The file is read as HDF5 only (nothing is unpickled).")
        st.caption(f"Upload limit: {limit} MB. Larger files: use a path on the server.")
        if uploaded is not None:
            state.RESTORED_UPLOAD.pop()
            return _saved_upload(uploaded)
        restored = state.RESTORED_UPLOAD.get()
        if restored and Path(restored["path"]).is_file():  # the upload of this browser tab, before a reload
            st.text(f"Using your earlier upload {restored['name']} (kept on the server); upload a file to "
                    "replace it.")
            return DatasetRef("upload", restored["path"], f"Upload: {restored['name']}", restored["path"])
        return None
    text = st.text_input("Path of a .h5ad file on the server", key=state.SERVER_PATH.name,
                         help="Read in backed mode (the expression matrix stays on disk); never modified.")
    return _server_path(text)


CHOOSE = "(choose…)"
# Fields without which nothing can be validated or trained, with the words the page uses for them.
REQUIRED = {"pert_col": "condition column", "control_pert": "control value", "cell_type_key": "cell-type column",
            "embed_key": "embedding"}
FIELD_WORDS = {**REQUIRED, "batch_col": "batch column", "velocity_key": "velocity key",
               "confidence_key": "velocity confidence"}


def _confirmed(tag: str) -> set:
    """Fields of this data set's mapping the user has chosen or confirmed (kept per data set)."""
    return state.MAPPING_CONFIRMED.get().setdefault(tag, set())


# A field whose options come from another: when that one changes, its value is a new guess again.
DEPENDS_ON = {"pert_col": "control_pert", "embed_key": "velocity_key"}


def _chosen(confirmed: set, field: str) -> None:
    confirmed.add(field)
    confirmed.discard(DEPENDS_ON.get(field))


def _mapping_widgets(ref: DatasetRef) -> dict:
    """Selectboxes for every ``ColumnMapping`` field, starting from ``guess_mapping``'s guesses.

    A required field the guesser could not fill starts at "(choose…)" and stays None until chosen: a no-guess
    must never become the first option (that trained cell types as "perturbations"). A guessed value is
    labelled "guessed" until the user picks a value or confirms the guesses. Widget keys carry the data set's
    identity, so a new data set starts from its own guesses. Returns every field (None where unset) and
    publishes ``mapping_missing`` and ``mapping_guessed`` (field names) in the session state."""
    from core.data.mapping import control_candidates

    adata = load_dataset(ref)
    guess = guessed_mapping(ref)
    tag = hashlib.sha1(repr(ref).encode()).hexdigest()[:10]
    confirmed = _confirmed(tag)
    if ref.kind == "demo":  # the demo's layout is known (core.training.data.DEMO_MAPPINGS), not guessed
        confirmed.update(FIELD_WORDS)
    obs_columns = [str(c) for c in adata.obs.columns]
    embeddings = [k for k in adata.obsm.keys() if getattr(adata.obsm[k], "ndim", 2) == 2]
    guessed: list[str] = []
    from_url = url_state.restored_mapping(ref)

    def pick(label, field, options, guess_value, allow_none=False, help=None, key_extra=""):
        first = NONE if allow_none else CHOOSE
        opts = [first] + [o for o in options if o != first]
        index = opts.index(guess_value) if guess_value in opts else 0
        key = state.MAPPING_FIELD.key(field, tag, key_extra)
        # the user's choice, back after a reload
        if not state.MAPPING_FIELD.is_set(field, tag, key_extra) and field in from_url:
            wanted = from_url[field] or first
            if wanted in opts:
                index = opts.index(wanted)
                confirmed.add(field)
        value = state.MAPPING_FIELD.get(field, tag, key_extra, default=opts[index])
        is_guess = guess_value in opts[1:] and value == guess_value and field not in confirmed
        if is_guess:
            guessed.append(field)
        value = st.selectbox(label + (" · guessed" if is_guess else ""), opts, index=index, key=key, help=help,
                             on_change=_chosen, args=(confirmed, field), disabled=len(opts) == 1)
        return None if value in (NONE, CHOOSE) else value

    pert_col = pick("Condition column", "pert_col", obs_columns, guess.pert_col or None,
                    help="The obs column saying burn or sham.")
    values = ([str(v) for v in adata.obs[pert_col].astype("category").cat.categories] if pert_col else [])
    control_guess = (guess.control_pert if pert_col == guess.pert_col and guess.control_pert
                     else next(iter(control_candidates(values)), None))
    # keyed by the condition column too: another column starts from its own control-like value
    control = pick("Control value", "control_pert", values, control_guess, help="The control condition (sham).",
                   key_extra="_" + hashlib.sha1(str(pert_col).encode()).hexdigest()[:6])
    cell_type = pick("Cell-type column", "cell_type_key", obs_columns, guess.cell_type_key or None)
    batch = pick("Batch column", "batch_col", obs_columns, guess.batch_col, allow_none=True,
                 help="e.g. mouse_id; nested in condition for burn/sham designs.")
    embed = pick("Embedding (obsm)", "embed_key", embeddings, guess.embed_key or None,
                 help="The latent space the model works in.")
    dim = adata.obsm[embed].shape[1] if embed else None
    same_shape = [k for k in embeddings if k != embed and adata.obsm[k].shape[1] == dim]
    velocity = pick("Velocity (obsm, latent)", "velocity_key", same_shape, guess.velocity_key, allow_none=True,
                    help="Velocities in the same latent space as the embedding; or compute them on the "
                         "Data page.")
    numeric = [c for c in obs_columns if adata.obs[c].dtype.kind in "fiu"]
    confidence = pick("Velocity confidence (obs)", "confidence_key", numeric, guess.confidence_key,
                      allow_none=True)
    mapping = dict(pert_col=pert_col, control_pert=control, cell_type_key=cell_type, batch_col=batch,
                   embed_key=embed, velocity_key=velocity, confidence_key=confidence)
    state.MAPPING_MISSING.set([f for f in REQUIRED if mapping[f] is None])
    state.MAPPING_GUESSED.set(guessed)
    url_state.remember(ref, mapping, confirmed, guess.to_dict())
    if guessed:
        st.caption("Fields marked *guessed* were filled in from the column names and values: check them.")
        st.button("Confirm the guessed fields", key=f"confirm_mapping_{tag}", on_click=confirmed.update,
                  args=(guessed,), type="primary")
    return mapping


def describe_fields(fields: list[str]) -> str:
    """["pert_col", "control_pert"] -> "condition column and control value"."""
    words = [FIELD_WORDS[f] for f in fields]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def render() -> None:
    """Draw the sidebar and publish ``state.DATASET`` and ``state.MAPPING``."""
    url_state.restore_once(SOURCES, DEMO_DATASETS, uploads_dir())
    pending = state.PENDING_SERVER_PATH.pop()
    if pending:  # a page asked to switch to a file it wrote (e.g. the data set with computed velocity)
        state.DATA_SOURCE.set(SOURCES[2])
        state.SERVER_PATH.set(pending)
    with st.sidebar:
        st.subheader("Data")
        ref = None
        with shown_errors("opening the data set"):
            ref = _choose_dataset()
        state.DATASET.set(ref)
        state.MAPPING.set(None)
        state.MAPPING_MISSING.set(list(REQUIRED))
        state.MAPPING_GUESSED.set([])
        if ref is None:
            url_state.remember(None, None, set(), {})
            st.info("Choose a data set above.")
            return
    if ref.kind == "demo":
        # In the main area: the demo's column mapping below starts closed, and a spinner inside it was never
        # seen, so the first start (minutes, while the demo is generated) looked like an empty, hung page.
        try:
            load_dataset(ref)
        except Exception as err:
            show_error(err, "loading the demo data set")
            state.DATASET.set(None)  # the pages then ask for a data set instead of failing a second time
            return
    with st.sidebar:
        with st.expander("Column mapping", expanded=ref.kind != "demo"):
            with shown_errors("reading the data set's columns"):
                mapping = _mapping_widgets(ref)
                # complete or nothing: a page never validates or trains with a field left to choose
                state.MAPPING.set(None if state.MAPPING_MISSING.get() else mapping)
        if ref.kind != "demo":
            # the user's file name as typed, never read as markdown
            st.text(f"Reading {ref.label.partition(': ')[2]}; the original file is never modified.")
