"""Is the chosen data set ready to train with the Train page's settings? One answer for the Data page's
check and the Train page's Launch button, so "Ready" on one never meets a failure after the other.

The settings the data is checked against (base model, its checkpoint, cells per set) live in
``state.TRAIN_CHOICE``, not in widget keys: widgets inside a page reset when the user leaves it,
and the Data page must see what the Train page chose. The check is ``core.data.validate.validate`` with the
base's embedding (``core.training.demo_base.base_embedding``), the same call as training makes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import streamlit as st

from app import state

BASES = ("Demo base model (pretrained on the demo atlas)", "A checkpoint or Arc State folder on the server",
         "From scratch")


def default_choice() -> dict:
    from core.config import Config

    return {"base": BASES[0], "checkpoint": "", "set_size": int(Config().model.kwargs.cell_set_len)}


def train_choice() -> dict:
    """The Train page's data-dependent settings: base (one of ``BASES``), checkpoint, set_size."""
    return {**default_choice(), **state.TRAIN_CHOICE.get()}


def init_from(choice: dict) -> str | None:
    """``model.init_from`` for the choice: 'demo', a checkpoint path, or None (from scratch)."""
    if choice["base"] == BASES[0]:
        return "demo"
    if choice["base"] == BASES[1]:
        return choice["checkpoint"].strip() or None
    return None


@st.cache_resource(max_entries=8, show_spinner="Reading what embedding the base model was trained on…")
def _base_embedding(init_from: str, stamp: float):
    from core.training.demo_base import base_embedding

    return base_embedding(init_from)


def base_embedding(init_from: str | None) -> dict | None:
    """The base's embedding fingerprint, cached per checkpoint file (re-read when the file changes)."""
    if not init_from:
        return None
    if init_from == "demo":
        from core.training.demo_base import demo_base_path

        path = demo_base_path()
    else:
        path = os.path.expanduser(init_from)
    try:
        stamp = os.path.getmtime(path)
    except OSError:
        stamp = 0.0
    return _base_embedding(init_from, stamp)


def describe_base(choice: dict, embedding: dict | None) -> str:
    name = {BASES[0]: "the demo base", BASES[1]: "the checkpoint", BASES[2]: "none (from scratch)"}[choice["base"]]
    if choice["base"] == BASES[1] and arc_base(init_from(choice)) is not None:
        name = "the Arc State folder"
    if embedding and embedding.get("key"):
        return f"{name} (trained on obsm['{embedding['key']}'], {embedding['dim']}-d)"
    if embedding:
        return f"{name} ({embedding['dim']}-d)"
    return name


@st.cache_resource(max_entries=4, show_spinner="Reading the Arc State folder…")
def arc_folder(path: str, stamp: float):
    """(folder, description, load report lines) of an Arc State folder or a checkpoint inside one; None when
    ``path`` is not one. The checkpoint is imported as training will import it, so its load report is real."""
    from core.arc.runtime import describe, find_arc_folder, load_arc, report_lines

    found = find_arc_folder(path)
    if found is None:
        return None
    _, folder, report = load_arc(*found)
    return folder, describe(folder), report_lines(report, folder)


def arc_base(path: str | None):
    """``arc_folder`` for a server path, re-read when the folder's checkpoint changes."""
    if not path or path == "demo":
        return None
    from core.arc.runtime import find_arc_folder

    found = find_arc_folder(os.path.expanduser(path))
    if found is None:
        return None
    folder_path, checkpoint = found
    try:
        stamp = max(os.path.getmtime(p) for p in (checkpoint or folder_path, folder_path))
    except OSError:
        stamp = 0.0
    return arc_folder(os.path.expanduser(path), stamp)


def arc_findings(ref, mapping: dict, path: str) -> list:
    """``core.arc.check.check_data`` of the data set against the Arc folder at ``path`` ([] when it is none),
    with the sidebar's keys."""
    from app import cache
    from core.arc.check import check_data
    from core.errors import UserError

    try:
        arc = arc_base(path)
    except UserError as err:  # a folder that cannot be imported: its one line is the reason Launch is disabled
        return [("error", str(err))]
    if arc is None:
        return []
    return check_data(arc[0], cache.load_dataset(ref), embed_key=mapping.get("embed_key"),
                      pert_col=mapping.get("pert_col"), control_pert=mapping.get("control_pert"),
                      batch_col=mapping.get("batch_col"))


@dataclass
class Readiness:
    """What stands between this data set and a launch. ``blockers``: one-line reasons Launch is disabled;
    ``report``: the validation report (None when the mapping is incomplete); ``against``: the settings it was
    checked against, in words; ``arc``: (level, text) findings of ``core.arc.check`` when the base is an Arc
    State folder (its "error" ones are blockers too)."""

    blockers: list[str] = field(default_factory=list)
    report: object = None
    against: str = ""
    arc: list = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return not self.blockers


def readiness() -> Readiness:
    from app import cache
    from app.sidebar import describe_fields
    from core.errors import UserError

    out = Readiness()
    ref = state.DATASET.get()
    if ref is None:
        out.blockers.append("choose a data set in the sidebar")
        return out
    mapping = state.MAPPING.get()
    if mapping is None:
        missing = state.MAPPING_MISSING.get()
        what = describe_fields(missing) if missing else "column mapping"
        out.blockers.append(f"choose the {what} in the sidebar's column mapping")
        return out
    choice = train_choice()
    base = init_from(choice)
    if choice["base"] == BASES[1] and base is None:
        out.blockers.append("give the path of the base checkpoint (.ckpt), or choose another base model")
        return out
    try:
        embedding = base_embedding(base)
    except UserError as err:
        out.blockers.append(str(err))
        return out
    out.against = f"set size {choice['set_size']}, base model {describe_base(choice, embedding)}"
    out.report = cache.validation_report(ref, tuple(sorted(mapping.items())), choice["set_size"], embedding)
    out.blockers += out.report.errors
    if base and base != "demo":
        out.arc = arc_findings(ref, mapping, base)
        out.blockers += [text for level, text in out.arc if level == "error" and text not in out.blockers]
    guessed = state.MAPPING_GUESSED.get()
    if guessed:
        out.blockers.append(f"the {describe_fields(guessed)} {'is' if len(guessed) == 1 else 'are'} guessed: "
                            "check and confirm them in the sidebar's column mapping")
    return out
