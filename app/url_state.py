"""The chosen data set and the user's mapping choices, remembered in the page's URL so a browser reload
(which starts a new session, with empty widgets) comes back to them instead of to the demo.

The URL holds references, never data: ``upload=<sha256>`` (the stored copy in ``<runs>/.uploads/``) with
``name=`` (the user's file name, shown as text only), or ``path=`` (a server path, which goes through the
sidebar's own checks like a typed one), or ``demo=<name>``; and ``m.<field>=<value>`` for each mapping
field the user chose or confirmed ("" for "(none)"). Guesses the user has not confirmed are left out, so
they come back as guesses. The page itself survives a reload through its own URL path (``st.navigation``).
"""

from __future__ import annotations

import re

import streamlit as st

from app import state

DIGEST = re.compile(r"[0-9a-f]{64}")
MAPPING_PREFIX = "m."
SOURCE_KEYS = ("upload", "name", "path", "demo")


def restore_once(sources: tuple[str, ...], demo_names, uploads_dir) -> None:
    """At the start of a session, preset the sidebar's widgets from the URL (once: later reruns belong to
    the widgets). ``sources``: the data-source radio's options (demo, upload, path)."""
    if state.URL_RESTORED.get():
        return
    state.URL_RESTORED.set(True)
    params = st.query_params
    restored_key = None
    if params.get("upload") and DIGEST.fullmatch(params["upload"]):
        path = uploads_dir / f"{params['upload']}.h5ad"
        if path.is_file():
            state.DATA_SOURCE.set(sources[1])
            state.RESTORED_UPLOAD.set({"path": str(path), "name": params.get("name") or "upload"})
            restored_key = str(path)
    elif params.get("path"):
        state.DATA_SOURCE.set(sources[2])
        state.SERVER_PATH.set(params["path"])
        restored_key = "path"
    elif params.get("demo") in demo_names:
        state.DATA_SOURCE.set(sources[0])
        state.DEMO_NAME.set(params["demo"])
        restored_key = params["demo"]
    fields = {k[len(MAPPING_PREFIX):]: v for k, v in params.items() if k.startswith(MAPPING_PREFIX)}
    if restored_key and fields:
        state.RESTORED_MAPPING.set({"for": restored_key, "fields": fields})


def restored_mapping(ref) -> dict:
    """The mapping choices the URL brought for this data set ({} for any other)."""
    restored = state.RESTORED_MAPPING.get()
    if not restored:
        return {}
    if restored["for"] in (ref.key, "path" if ref.kind == "path" else None):
        return restored["fields"]
    return {}


def remember(ref, mapping: dict | None, confirmed: set, guess: dict) -> None:
    """Write the data set and the confirmed mapping fields into the URL (only when they changed: each write
    is a message to the browser). The demo's fields are all known, so only those changed from it go in."""
    wanted: dict[str, str] = {}
    if ref is not None:
        if ref.kind == "upload":
            wanted["upload"] = ref.key.rsplit("/", 1)[-1].removesuffix(".h5ad")
            wanted["name"] = ref.label.partition(": ")[2]
        elif ref.kind == "path":
            wanted["path"] = ref.key
        else:
            wanted["demo"] = ref.key
        for field in sorted(confirmed):
            if mapping is None or field not in mapping:
                continue
            if ref.kind == "demo" and mapping[field] == (guess.get(field) or None):
                continue
            wanted[MAPPING_PREFIX + field] = "" if mapping[field] is None else str(mapping[field])
    ours = [k for k in st.query_params.keys() if k in SOURCE_KEYS or k.startswith(MAPPING_PREFIX)]
    current = {k: st.query_params[k] for k in ours}
    if current != wanted:  # other parameters (Streamlit's own, e.g. embed) are left alone
        for key in ours:
            if key not in wanted:
                del st.query_params[key]
        st.query_params.update(wanted)
