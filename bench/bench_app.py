"""The app answers while the user thinks: cold start to the first page, page switches, a Data page rerun.

Browser rows (Debian chromium via playwright) time what a user sees: from spawning ``streamlit run
app/main.py`` to the Data page's figure drawn in the browser (cold start), and from a click in the page
navigation to the next page's heading with its figures drawn and the script finished (page switch).
AppTest rows time the server-side script alone for the same actions (no browser, no network), which is
what our code controls. Targets: cold start <= 10 s, page switch <= 1 s.

The pages run against a runs folder holding one real, evaluated fine-tune (LoRA + mHC + velocity, one
epoch), trained once before timing, so Inspect, Compare and Export draw real figures.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from bench.harness import Row, Timing, measure

REPO_ROOT = Path(__file__).resolve().parents[1]
PAGE_FILES = {"Data": "views/data.py", "Train": "views/train.py", "Inspect": "views/inspect.py",
              "Compare": "views/compare.py", "Export": "views/export.py"}
HEADINGS = {"Data": "Data", "Train": "Train", "Inspect": "Inspect a run", "Compare": "Compare runs",
            "Export": "Export"}
# Figures each page draws on the demo with one evaluated mHC + velocity run (at least).
MIN_CHARTS = {"Data": 1, "Train": 4, "Inspect": 5, "Compare": 2, "Export": 0}
VELOCITY_TAB_CHARTS = 3  # cos histograms, |dz| vs |v_z|, arrows on the UMAP
COLD_START_TARGET_S = 10.0
PAGE_SWITCH_TARGET_S = 1.0


# One epoch of a small LoRA + mHC + velocity fine-tune from the demo base: real curves, snapshots and
# predictions, in seconds on a CPU.
TINY_RUN = ["training.max_epochs=1", "model.kwargs.use_mhc=true", "model.kwargs.use_velocity_alignment=true",
            "training.accelerator=cpu"]


def _apptest_rows(root: Path, repeats: int) -> list[Row]:
    from streamlit.testing.v1 import AppTest

    os.environ["ST_RUNS_DIR"] = str(root)
    at = AppTest.from_file(str(REPO_ROOT / "app" / "main.py"), default_timeout=120)
    at.run()
    rows = []
    for name, page in PAGE_FILES.items():
        def switch(page=page):
            at.switch_page(page).run()
            assert not at.exception, at.exception

        timing = measure(switch, repeats=repeats, warmup=1)
        rows.append(Row("app", f"page switch to {name} (AppTest, script only)", timing,
                        target=f"<= {PAGE_SWITCH_TARGET_S:g} s", met=timing.median_s <= PAGE_SWITCH_TARGET_S))
    at.switch_page(PAGE_FILES["Data"]).run()
    colours = [c for c in at.selectbox(key="data_colour").options]
    state = {"i": 0}

    def recolour():
        state["i"] += 1
        at.selectbox(key="data_colour").set_value(colours[state["i"] % len(colours)]).run()

    timing = measure(recolour, repeats=repeats, warmup=1)
    rows.append(Row("app", "Data page rerun: recolour the UMAP (AppTest)", timing,
                    target=f"<= {PAGE_SWITCH_TARGET_S:g} s", met=timing.median_s <= PAGE_SWITCH_TARGET_S))
    return rows


@contextmanager
def _data_page(browser, env: dict):
    """A fresh ``streamlit run app/main.py`` and a browser tab on it, once the Data page is drawn."""
    from app import serve

    process, url = serve.start_server(env=env)
    try:
        serve.wait_healthy(url, process)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.goto(url)
        serve.wait_for_page(page, HEADINGS["Data"], charts=MIN_CHARTS["Data"])
        yield page
    finally:
        serve.stop_server(process)


def _browser_rows(root: Path, repeats: int) -> list[Row]:
    from playwright.sync_api import sync_playwright

    from app import serve

    env = {"ST_RUNS_DIR": str(root)}
    rows = []
    with sync_playwright() as playwright:
        chromium = serve.chromium_path()
        browser = playwright.chromium.launch(executable_path=chromium, args=serve.CHROMIUM_ARGS)
        try:
            def cold_start():
                start = time.perf_counter()
                with _data_page(browser, env) as page:
                    samples.append(time.perf_counter() - start)
                    page.close()

            samples: list[float] = []
            cold_start()  # warm-up: file caches, the demo data on disk, numba/pyc compilation
            samples.clear()
            for _ in range(repeats):
                cold_start()
            timing = Timing.of(samples)
            rows.append(Row("app", "cold start to the Data page drawn (browser)", timing,
                            target=f"<= {COLD_START_TARGET_S:g} s",
                            met=timing.median_s <= COLD_START_TARGET_S))

            with _data_page(browser, env) as page:
                order = list(PAGE_FILES)[1:] + ["Data"]
                for name in order:  # warm-up: each page's first visit imports its modules
                    serve.open_page(page, name)
                    serve.wait_for_page(page, HEADINGS[name], charts=MIN_CHARTS[name])
                per_page: dict[str, list[float]] = {name: [] for name in order}
                for _ in range(repeats):
                    for name in order:
                        start = time.perf_counter()
                        serve.open_page(page, name)
                        serve.wait_for_page(page, HEADINGS[name], charts=MIN_CHARTS[name])
                        per_page[name].append(time.perf_counter() - start)
                for name in order:
                    timing = Timing.of(per_page[name])
                    rows.append(Row("app", f"page switch to {name} (browser)", timing,
                                    target=f"<= {PAGE_SWITCH_TARGET_S:g} s",
                                    met=timing.median_s <= PAGE_SWITCH_TARGET_S))
                rows.append(_velocity_tab_row(page, repeats))
        finally:
            browser.close()
    return rows


def _velocity_tab_row(page, repeats: int) -> Row:
    """Inspect draws only its open tab, so opening 'Δz vs velocity' is a rerun of its own: time it."""
    from app import serve

    serve.open_page(page, "Inspect")
    serve.wait_for_page(page, HEADINGS["Inspect"], charts=MIN_CHARTS["Inspect"])
    samples = []
    for i in range(repeats + 1):  # the first opening loads the predictions and is dropped
        start = time.perf_counter()
        page.get_by_role("tab", name="Δz vs velocity").click()
        serve.wait_until_idle(page, charts=VELOCITY_TAB_CHARTS)
        if i:
            samples.append(time.perf_counter() - start)
        page.get_by_role("tab", name="mHC mappings").click()
        serve.wait_until_idle(page, charts=MIN_CHARTS["Inspect"])
    timing = Timing.of(samples)
    return Row("app", "Inspect: open the Δz vs velocity tab (browser)", timing,
               target=f"<= {PAGE_SWITCH_TARGET_S:g} s", met=timing.median_s <= PAGE_SWITCH_TARGET_S)


def run(quick: bool) -> list[Row]:
    from app.serve import chromium_path

    repeats = 3 if quick else 5
    with tempfile.TemporaryDirectory(prefix="bench-app-runs-") as tmp:
        root = Path(tmp)
        from app.serve import train_and_evaluate

        train_and_evaluate(root, "bench-mhc-velocity", TINY_RUN)
        rows = []
        if chromium_path():
            rows += _browser_rows(root, repeats)
        else:
            print("[bench_app] chromium not found: browser rows skipped (install Debian's chromium)",
                  file=sys.stderr)
        rows += _apptest_rows(root, repeats)
    return rows
