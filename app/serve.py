"""Start the app as a real server on 127.0.0.1 and open it in headless Chromium: shared by the browser test
and the app benchmark, so both measure what a user gets from ``streamlit run app/main.py``."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# Debian's chromium under playwright, headless and quiet (no sandbox: CI containers run as root).
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
PAGES = ("Data", "Train", "Inspect", "Compare", "Export")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def start_server(port: int | None = None, env: dict | None = None, log_path: Path | None = None):
    """``streamlit run app/main.py`` on 127.0.0.1:port in its own process group; returns (process, url).
    Call ``wait_healthy`` before opening the page."""
    port = port or free_port()
    command = [sys.executable, "-m", "streamlit", "run", str(REPO_ROOT / "app" / "main.py"),
               "--server.headless", "true", "--server.address", "127.0.0.1", "--server.port", str(port),
               "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    process = subprocess.Popen(command, cwd=REPO_ROOT, env={**os.environ, **(env or {})}, stdout=out,
                               stderr=subprocess.STDOUT, start_new_session=True)
    return process, f"http://127.0.0.1:{port}"


def wait_healthy(url: str, process, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {process.returncode} before answering")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"streamlit did not answer on {url} within {timeout} s")


def stop_server(process) -> None:
    """End the server we started (its own process group), politely first."""
    if process.poll() is not None:
        return
    import signal

    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


# One per figure: plotly draws several '.main-svg' layers into each figure, so counting those overstated it.
VISIBLE_CHARTS_JS = ("() => [...document.querySelectorAll('.js-plotly-plot')]"
                     ".filter(e => e.querySelector('.main-svg') && e.getClientRects().length > 0).length")


def visible_charts(page) -> int:
    """Plotly figures drawn on screen, one per figure (a hidden tab's figures do not count)."""
    return page.evaluate(VISIBLE_CHARTS_JS)


def wait_until_idle(page, timeout_ms: float = 60_000, charts: int = 0) -> None:
    """Wait until Streamlit's script has finished (the app root's ``data-test-script-state``) and at least
    ``charts`` plotly figures are drawn and visible."""
    page.wait_for_function(
        "() => document.querySelector('[data-testid=\"stApp\"]')?.dataset.testScriptState === 'notRunning'",
        timeout=timeout_ms)
    if charts:
        page.wait_for_function(f"n => ({VISIBLE_CHARTS_JS})() >= n", arg=charts, timeout=timeout_ms)


def wait_for_page(page, title: str, timeout_ms: float = 60_000, charts: int = 0) -> None:
    """Wait until the page's heading is ``title`` (so the new page's run has started), its script has
    finished, and ``charts`` figures are drawn. The heading is looked for in the main area only: the sidebar
    has a "Data" subheader on every page, which matched at once."""
    main = page.locator('[data-testid="stMain"]')
    main.get_by_role("heading", name=title, exact=False).first.wait_for(timeout=timeout_ms)
    wait_until_idle(page, timeout_ms, charts)


def open_page(page, name: str) -> None:
    """Click a page in the sidebar navigation."""
    page.locator('[data-testid="stSidebarNav"] a', has_text=name).first.click()


def train_and_evaluate(root: Path, name: str, overrides: list[str]) -> Path:
    """Fine-tune and evaluate one run into ``root`` with the command line the app drives (``python -m core
    train`` then ``evaluate``); returns the run folder. Used to give the browser test and the benchmark
    real figures to draw."""
    env = {**os.environ, "ST_RUNS_DIR": str(root)}
    for command in (["train", f"run.name={name}", *overrides], ["evaluate", str(Path(root) / name)]):
        result = subprocess.run([sys.executable, "-m", "core", *command], cwd=REPO_ROOT, env=env,
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"python -m core {command[0]} failed:\n{result.stdout[-3000:]}\n"
                               f"{result.stderr[-3000:]}")
    return Path(root) / name
