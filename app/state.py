"""Every key the app keeps in ``st.session_state``, declared once: its name, type, default and why it exists.

Pages share state through ``st.session_state`` (one dict per browser tab, kept across reruns and page switches;
a browser reload starts a new one, see ``app/url_state.py``). Widgets inside a page lose their values when the
user leaves the page, so whatever another page must see is written to one of the keys below, not read from a
widget. Code reads and writes them through the typed accessors (``state.DATASET.get()``), never by string:
``tests/unit/test_session_state.py`` fails on a raw ``st.session_state`` access anywhere else in ``app/``.

Two kinds of key:

- ``Key``: ours. ``get()`` returns the default when the key was never set (a mutable default is stored on
  first ``get()``, so it can be updated in place).
- ``WidgetKey``: the ``key=`` of a widget that more than one place reads or presets (e.g. the URL restore
  presets the data-source radio). Streamlit owns its value once the widget is drawn; we may only write it
  before the widget is drawn in a run, or in a callback. ``WidgetKeys`` is a family of them, one per run or
  data set (``tags_<run>``). Widget keys read only by the widget itself stay as literals where it is drawn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import streamlit as st

if TYPE_CHECKING:
    from app.cache import DatasetRef

T = TypeVar("T")

REGISTRY: dict[str, Key[Any]] = {}  # name -> declaration; a second declaration of a name is an error


@dataclass(frozen=True)
class Key(Generic[T]):
    name: str
    default: Callable[[], T]
    why: str

    def __post_init__(self):
        if self.name in REGISTRY:
            raise ValueError(f"session key {self.name!r} is declared twice")
        REGISTRY[self.name] = self

    def get(self) -> T:
        if self.name not in st.session_state:
            value = self.default()
            if isinstance(value, (dict, list, set)):  # stored, so an in-place update is kept
                st.session_state[self.name] = value
            return value
        return st.session_state[self.name]

    def set(self, value: T) -> None:
        st.session_state[self.name] = value

    def pop(self) -> T:
        """The value (the default when unset), and the key removed."""
        return st.session_state.pop(self.name, self.default())

    def is_set(self) -> bool:
        return self.name in st.session_state


class WidgetKey(Key[T]):
    """A widget's ``key=``; ``default`` is the value the widget starts with."""


@dataclass(frozen=True)
class WidgetKeys(Generic[T]):
    """A family of widget keys, ``pattern.format(*parts)``: one widget per run or per data set."""

    pattern: str
    why: str

    def key(self, *parts: object) -> str:
        return self.pattern.format(*parts)

    def get(self, *parts: object, default: T | None = None) -> T | None:
        return st.session_state.get(self.key(*parts), default)

    def set(self, *parts: object, value: T) -> None:
        st.session_state[self.key(*parts)] = value

    def is_set(self, *parts: object) -> bool:
        return self.key(*parts) in st.session_state


def widget_value(key: str, default: Any = None) -> Any:
    """The value of the widget with this ``key=`` (a key the caller was handed, e.g. ``run_picker``'s)."""
    return st.session_state.get(key, default)


def set_widget_value(key: str, value: Any) -> None:
    """Preset the widget with this ``key=`` (before it is drawn in this run)."""
    st.session_state[key] = value


# ------------------------------------------------------------------------------------ the data set (sidebar)
DATASET: Key[DatasetRef | None] = Key(
    "dataset", lambda: None, "the data set chosen in the sidebar, for every page (strings only, no data)")
MAPPING: Key[dict | None] = Key(
    "mapping", lambda: None, "the ColumnMapping fields, or None while a required field is still to choose")
MAPPING_MISSING: Key[list[str]] = Key(
    "mapping_missing", list, "required mapping fields not chosen yet, named in the pages' 'choose …' hints")
MAPPING_GUESSED: Key[list[str]] = Key(
    "mapping_guessed", list, "mapping fields that are still unconfirmed guesses (they block Launch)")
MAPPING_CONFIRMED: Key[dict[str, set[str]]] = Key(
    "mapping_confirmed", dict, "per data set (a hash of its ref): the fields the user chose or confirmed")
UPLOAD_DIGESTS: Key[dict[str, str]] = Key(
    "upload_digests", dict, "uploader file id -> sha256 of its content, so an upload is hashed and saved once")
RESTORED_UPLOAD: Key[dict | None] = Key(
    "restored_upload", lambda: None, "the upload the URL named before a reload: {'path', 'name'}")
RESTORED_MAPPING: Key[dict | None] = Key(
    "restored_mapping", lambda: None, "the mapping fields the URL brought: {'for': data set key, 'fields'}")
URL_RESTORED: Key[bool] = Key(
    "_url_restored", lambda: False, "the URL was read into the widgets once this session (later runs are theirs)")
PENDING_SERVER_PATH: Key[str | None] = Key(
    "pending_server_path", lambda: None,
    "a file a page wrote (e.g. a copy with velocity) for the sidebar to switch to before its widgets are drawn")
# the sidebar's widgets, preset by the URL restore and by PENDING_SERVER_PATH
DATA_SOURCE: WidgetKey[str] = WidgetKey("data_source", lambda: "", "the sidebar's data-source radio")
SERVER_PATH: WidgetKey[str] = WidgetKey("server_path", lambda: "", "the sidebar's server-path text input")
DEMO_NAME: WidgetKey[str] = WidgetKey("demo_name", lambda: "", "the sidebar's demo data set selectbox")
MAPPING_FIELD: WidgetKeys[str] = WidgetKeys(
    "map_{}_{}{}", "a mapping selectbox: field, data set hash, and (for the control value) its condition column")

# ------------------------------------------------------------------------------------ pages and their choices
CURRENT_PAGE: Key[str | None] = Key(
    "current_page", lambda: None, "the page being drawn, so show_figure files its figures under it")
SHOWN_FIGURES: Key[dict[str, dict]] = Key(
    "shown_figures", dict, "page -> {name: figure} as last shown there, for the Export page")
SELECTED_RUN: Key[str | None] = Key(
    "selected_run", lambda: None, "the run every page's run picker shows (a launch or a pick on any page sets it)")
TRAIN_CHOICE: Key[dict] = Key(
    "train_choice", dict, "the Train page's base model, checkpoint and set size, which the Data page checks against")
MIN_CONFIDENCE: Key[float | None] = Key(
    "min_confidence", lambda: None, "the last launch's velocity confidence threshold, marked on the Data page")
RUN_VIEW: Key[dict] = Key(
    "run_view", dict, "the Train page's view of a run {'run', 'log_y', 'smoothing'}, so exports look the same")
RUN_ACTION: Key[tuple | None] = Key(
    "run_action", lambda: None, "the outcome of the last resume/tag/clone/delete, shown once on the next draw")
EXPERIMENT_SHOWN: Key[str | None] = Key(
    "experiment_shown", lambda: None, "the experiment just started, shown first in the experiment picker")
VELOCITY_ARROW_MODE: WidgetKey[str] = WidgetKey(
    "velocity_arrow_mode", lambda: "grid-averaged", "the Data page's arrow radio, read before it is drawn")
VELOCITY_GRID: WidgetKey[int] = WidgetKey(
    "velocity_grid", lambda: 25, "the Data page's grid-size slider, read before it is drawn")
RUN_TAGS: WidgetKeys[str] = WidgetKeys("tags_{}", "a run's tags text input, read by its Save button")
CLONE_CHANGES: WidgetKeys[str] = WidgetKeys("clone_changes_{}", "a run's clone changes, read by its Launch button")
CLONE_NAME: WidgetKeys[str] = WidgetKeys("clone_name_{}", "a run's clone name, read by its Launch button")
