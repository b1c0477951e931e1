"""Inspect follows a run while it trains: the page asks the browser to redraw it every ``POLL_S`` (a fragment
timer) while the run is queued or running, draws the snapshots that arrived since, and sends no timer once
the run has ended. The browser half (the page really redraws, then stops) is in ``test_browser_live.py``."""


import numpy as np
import pytest
from streamlit.testing.v1 import local_script_runner as runner
from support import started_app

from core.runs import RunWriter
from tests.app.test_app_views import by_title

H_RES = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1], [0.1, 0.1, 0.7, 0.1], [0.1, 0.1, 0.1, 0.7]])


def snapshot(writer: RunWriter, step: int, h_res: np.ndarray) -> None:
    writer.snapshot_mhc(step, [{"h_res": h_res, "h_pre": np.full(4, 0.25), "h_post": np.ones(4), "layer_index": 0}])


@pytest.fixture
def timers(monkeypatch):
    """The fragment timers (``auto_rerun`` messages) each run of the page sends to the browser."""
    sent: list[list[float]] = []
    original = runner.LocalScriptRunner.forward_msgs

    def recording(self):
        messages = original(self)
        sent.append([m.auto_rerun.interval for m in messages if m.HasField("auto_rerun")])
        return messages

    monkeypatch.setattr(runner.LocalScriptRunner, "forward_msgs", recording)
    return sent


def test_inspect_polls_while_the_run_trains_draws_new_snapshots_and_stops_when_it_ends(tmp_path, monkeypatch,
                                                                                        timers):
    writer = RunWriter(tmp_path / "live")  # this test's process is the run's live "trainer"
    writer.write_status("running", step=0, total_steps=40)
    snapshot(writer, 0, H_RES)
    at = started_app(monkeypatch, tmp_path, timeout=60)
    at.session_state["selected_run"] = "live"
    at.switch_page("views/inspect.py").run()
    assert not at.exception
    assert "State: **running**" in at.caption[0].value
    assert len(timers[-1]) == 1 and timers[-1][0] > 0  # the Inspect fragment's timer (the only fragment here)
    assert "step 0" in by_title(at, "H_res at step").layout.title.text

    moved = H_RES + np.array([[0.1, -0.1, 0, 0], [-0.1, 0.1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    snapshot(writer, 20, moved)  # a snapshot lands mid-run: the next redraw shows it
    writer.write_status("running", step=20)
    at.run()
    assert len(timers[-1]) == 1
    heatmap = next(t for t in by_title(at, "H_res at step").data if t.type == "heatmap")
    np.testing.assert_allclose(np.asarray(heatmap.z), moved, atol=1e-6)
    assert at.select_slider(key="inspect_step").value == 20  # the newest snapshot is the one shown

    writer.write_status("completed", step=40)
    at.run()
    assert not at.exception
    assert "State: **completed**" in at.caption[0].value
    assert timers[-1] == []  # ended: no timer, the page stops redrawing
