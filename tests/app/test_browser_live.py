"""In a real browser, the Inspect page follows a run while it trains: a snapshot written mid-run appears without
a reload, and when the run ends the whole page is redrawn once, which makes the fragment again without its
timer (read from the messages the server sends the browser). This test's process plays the trainer.
"""

import numpy as np
import pytest
from playwright.sync_api import expect, sync_playwright

from app.serve import CHROMIUM_ARGS, chromium_path, start_server, stop_server, wait_for_page, wait_healthy
from core.runs import RunWriter

pytestmark = pytest.mark.slow  # drives a real server

if chromium_path() is None:
    pytest.skip("chromium is not installed (./dev test installs it as root)", allow_module_level=True)



def decode(frame):
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    return ForwardMsg.FromString(frame if isinstance(frame, bytes) else frame.encode())


def pump_until(page, predicate, what: str, timeout_s: float = 120.0) -> None:
    """Poll ``predicate`` while letting playwright deliver events (its sync API handles websocket frames only
    inside its own calls, so a plain sleep would never see a new message)."""
    for _ in range(int(timeout_s * 10)):
        if predicate():
            return
        page.wait_for_timeout(100)
    raise AssertionError(f"{what} did not happen within {timeout_s:.0f} s")


def full_run_ends(messages) -> list[int]:
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    return [i for i, m in enumerate(messages)
            if m.WhichOneof("type") == "script_finished" and m.script_finished == ForwardMsg.FINISHED_SUCCESSFULLY]


LAYERS = [{"h_pre": np.full(4, 0.25), "h_post": np.ones(4), "layer_index": 0}]


def test_inspect_redraws_a_running_run_and_redraws_the_page_once_it_ends(tmp_path):
    writer = RunWriter(tmp_path / "live")
    writer.write_status("running", step=0, total_steps=40)
    writer.snapshot_mhc(0, [{**LAYERS[0], "h_res": np.full((4, 4), 0.25)}])
    process, url = start_server(env={"ST_RUNS_DIR": str(tmp_path)}, log_path=tmp_path / "streamlit.log")
    try:
        wait_healthy(url, process)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 2000})
            messages: list = []  # every message the server sends this tab
            page.on("websocket", lambda ws: ws.on("framereceived", lambda data: messages.append(decode(data))))
            page.goto(f"{url}/inspect")
            wait_for_page(page, "Inspect a run", charts=1)
            page.get_by_text("H_res at step 0").first.wait_for(timeout=60_000)

            writer.snapshot_mhc(20, [{**LAYERS[0], "h_res": np.eye(4)}])
            writer.write_status("running", step=20)
            page.get_by_text("H_res at step 20").first.wait_for(timeout=60_000)  # no reload: the fragment's timer

            ended = len(messages)
            writer.write_status("completed", step=40)
            # the fragment notices the end and reruns the whole page once (a full run finishes with
            # FINISHED_SUCCESSFULLY, a fragment's run with FINISHED_FRAGMENT_RUN_SUCCESSFULLY); that run sends no timer
            expect(page.get_by_text("State: completed")).to_be_visible(timeout=60_000)
            pump_until(page, lambda: full_run_ends(messages[ended:]), "a full rerun of the page after the run ended")
            finish = ended + full_run_ends(messages[ended:])[0]
            start = max(i for i in range(finish) if messages[i].WhichOneof("type") == "new_session")
            assert not [m for m in messages[start:finish] if m.WhichOneof("type") == "auto_rerun"]
            assert page.get_by_text("H_res at step 20").count() >= 1
            browser.close()
    finally:
        stop_server(process)
