"""A real browser (Debian's chromium, headless, via playwright) against ``streamlit run app/main.py`` on
127.0.0.1: every page opens, draws its figures, shows no error, and a figure downloads as a real PNG.
Screenshots of each page go to a temporary folder, or to docs/screenshots/ (the README shows them) when
UPDATE_SCREENSHOTS=1, so that a test run never changes tracked files.

Needs chromium: ``./dev test`` installs it when run as root. Without it the test is skipped on a
developer machine and fails under CI (CI=true), so CI never passes without having run it.
"""

import os
import struct
from pathlib import Path

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from playwright.sync_api import expect, sync_playwright

from app.cache import DEMO_DATASETS
from app.serve import (
    CHROMIUM_ARGS,
    chromium_path,
    open_page,
    start_server,
    stop_server,
    train_and_evaluate,
    visible_charts,
    wait_for_page,
    wait_healthy,
    wait_until_idle,
)

pytestmark = pytest.mark.slow  # trains, or drives a real server: left out of the fast lane

REPO_ROOT = Path(__file__).resolve().parents[2]
DOC_SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"
VIEWPORT = {"width": 1400, "height": 2000}

if chromium_path() is None:
    if os.environ.get("CI") == "true":
        pytest.fail("chromium is not installed: CI must run the browser test (apt-get install chromium)",
                    pytrace=False)
    pytest.skip("chromium is not installed (./dev test installs it as root)", allow_module_level=True)

# A small real fine-tune with everything on, so Inspect, Compare and Export have real figures to draw.
TINY_RUN = ["training.max_epochs=1", "model.kwargs.use_mhc=true", "model.kwargs.use_velocity_alignment=true",
            "training.accelerator=cpu"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    train_and_evaluate(root, "st-lora-mhc-velocity", TINY_RUN)
    log = tmp_path_factory.mktemp("log") / "streamlit.log"
    process, url = start_server(env={"ST_RUNS_DIR": str(root)}, log_path=log)
    try:
        wait_healthy(url, process)
        yield url, log
    finally:
        stop_server(process)


@pytest.fixture(scope="module")
def page(server):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
        page = context.new_page()
        page.goto(server[0])
        yield page
        browser.close()


def assert_no_errors(page, name):
    assert page.locator('[data-testid="stException"]').count() == 0, f"{name}: a traceback is shown"
    errors = page.locator('[data-testid="stAlertContentError"]')
    assert errors.count() == 0, f"{name}: error shown: {errors.first.inner_text()}"


def choose_in_sidebar(page, label: str, option: str) -> None:
    page.locator('[data-testid="stSidebar"]').get_by_role("combobox", name=label).click()
    page.get_by_role("option", name=option).click()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        DOC_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        return DOC_SCREENSHOTS
    return tmp_path_factory.mktemp("screenshots")


def test_every_page_opens_draws_its_figures_and_is_screenshotted(page, screenshots):
    wait_for_page(page, "Data", charts=1)
    assert_no_errors(page, "Data")
    # The demo with scvelo velocity: the Data page then also draws velocity arrows and confidence.
    choose_in_sidebar(page, "Demo data set", DEMO_DATASETS["burn_sham:velocity"])
    wait_until_idle(page, charts=3)
    assert_no_errors(page, "Data with velocity")
    page.screenshot(path=screenshots / "data.png")
    streams = page.locator('[data-testid="stPlotlyChart"]').filter(has_text="Velocity streamlines on the UMAP")
    streams.scroll_into_view_if_needed()
    streams.screenshot(path=screenshots / "data_streams.png")
    for name, heading, charts in (("Train", "Train", 3), ("Inspect", "Inspect a run", 4),
                                  ("Compare", "Compare runs", 2), ("Export", "Export", 0)):
        open_page(page, name)
        wait_for_page(page, heading, charts=charts)
        assert visible_charts(page) >= charts, name
        assert_no_errors(page, name)
        if name == "Export":  # its download buttons are drawn after the script ends: not blank in the picture
            expect(page.get_by_role("button", name="PNG").last).to_be_visible(timeout=60_000)
        page.screenshot(path=screenshots / f"{name.lower()}.png")
        if name == "Inspect":
            page.get_by_role("tab", name="Δz vs velocity").click()
            wait_until_idle(page, charts=3)
            assert_no_errors(page, "Inspect, Δz vs velocity")
            page.screenshot(path=screenshots / "inspect_velocity.png")


def test_a_figure_downloads_as_a_png_of_the_stated_size(page, server):
    url, log = server
    # A fresh load of the page: clicking the nav link of the page already shown may rerun it, and a rerun
    # racing the click re-registers the button's deferred download under a new id.
    page.goto(f"{url}/export")
    wait_for_page(page, "Export")
    button = page.get_by_role("button", name="PNG").first
    button.wait_for(state="visible")
    try:
        with page.expect_download(timeout=90_000) as download:
            button.click()
        data = Path(download.value.path()).read_bytes()
    except PlaywrightTimeoutError:
        shown = page.locator('[data-testid="stToast"], [data-testid="stAlert"]').all_inner_texts()
        pytest.fail(f"no download within 90 s; page shows {shown}; server log ends:\n"
                    f"{log.read_text(errors='replace')[-3000:]}", pytrace=False)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width == 1600 and height >= 600  # 800 CSS px at scale 2; height is the figure's own
