"""The app's session state is declared once, in ``app/state.py``: no other app module touches
``st.session_state`` by string, every key has a reason, and the accessors keep Streamlit's semantics
(defaults for unset keys, in-place updates of a stored dict kept across reruns)."""

import ast
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app import state

APP_DIR = Path(__file__).resolve().parents[2] / "app"


def _raw_accesses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [f"{path.relative_to(APP_DIR.parent)}:{node.lineno}" for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr == "session_state"]


def test_no_app_module_but_state_reads_or_writes_session_state_directly():
    raw = [hit for path in sorted(APP_DIR.rglob("*.py")) if path.name != "state.py" for hit in _raw_accesses(path)]
    assert raw == [], f"use app.state's declared keys instead: {raw}"
    assert _raw_accesses(APP_DIR / "state.py")  # the check reads attribute accesses at all


def test_every_key_is_declared_once_with_a_reason():
    declared = [v for v in vars(state).values() if isinstance(v, (state.Key, state.WidgetKeys))]
    names = [k.name if isinstance(k, state.Key) else k.pattern for k in declared]
    assert len(names) == len(set(names))
    assert set(state.REGISTRY) == {k.name for k in declared if isinstance(k, state.Key)}
    assert all(len(k.why.split()) >= 3 for k in declared)
    with pytest.raises(ValueError, match="'dataset' is declared twice"):
        state.Key("dataset", lambda: None, "a second declaration of the same key")


def _script():
    import streamlit as st

    from app import state

    figures = state.SHOWN_FIGURES.get()  # unset: the default, stored so the update below is kept
    figures["Data"] = {"n": len(figures)}
    st.text(f"selected={state.SELECTED_RUN.get()!r} grid={state.VELOCITY_GRID.get()} "
            f"popped={state.RUN_ACTION.pop()!r} tags={state.RUN_TAGS.get('r1', default='none')}")
    state.RUN_ACTION.set(("success", "done"))


def test_accessors_give_defaults_keep_in_place_updates_and_pop():
    at = AppTest.from_function(_script)
    at.run()
    assert at.text[0].value == "selected=None grid=25 popped=None tags=none"
    assert at.session_state["shown_figures"] == {"Data": {"n": 0}}
    at.session_state["selected_run"] = "r1"
    at.session_state["tags_r1"] = "baseline"
    at.run()
    assert at.text[0].value == "selected='r1' grid=25 popped=('success', 'done') tags=baseline"
    assert at.session_state["shown_figures"] == {"Data": {"n": 1}}  # the stored dict, updated in place
