"""Exported files are what they claim: PNG and SVG of the stated size, HTML that works offline, a run bundle
with every part, and the headless CLI writing the same figures."""

import io
import os
import shutil
import struct
import xml.etree.ElementTree as ET
import zipfile

import numpy as np
import pytest
import yaml

from core.figures import export, training
from core.runs import RunWriter

NO_BROWSER = shutil.which("chromium") is None and not os.environ.get("BROWSER_PATH")
pytestmark = pytest.mark.skipif(
    NO_BROWSER and os.environ.get("CI") != "true",
    reason="PNG/SVG export needs Debian's chromium ('./dev test' installs it); required when CI=true",
)


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, after checking the 8-byte signature."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def svg_size(data: bytes) -> tuple[float, float]:
    root = ET.fromstring(data)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return float(root.get("width")), float(root.get("height"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A small but complete run folder written through the same RunWriter the trainer uses."""
    path = tmp_path_factory.mktemp("runs") / "lora-mhc"
    rng = np.random.default_rng(0)
    with RunWriter(path) as writer:
        writer.write_status("running", total_steps=30)
        for step in range(30):
            writer.append_metrics({"split": "train", "step": step, "epoch": 0, "loss": 2.0 - step / 30,
                                   "dist_loss": 1.5 - step / 40, "grad_norm": float(rng.random()),
                                   "lr": 1e-4})
        writer.append_metrics({"split": "val", "step": 29, "epoch": 0, "val_loss": 1.3})
        for step in (0, 29):
            h = np.full((4, 4), 0.25)
            writer.snapshot_mhc(step, [{"h_res": h, "h_pre": np.full(4, 0.25), "h_post": np.ones(4),
                                        "layer_index": i} for i in range(2)])
        writer.write_status("completed", step=30)
    (path / "config.yaml").write_text(yaml.safe_dump({"model": {"kwargs": {"use_mhc": True}},
                                                      "training": {"max_epochs": 1}}))
    return path


@pytest.fixture(scope="module")
def figure():
    import pandas as pd

    metrics = pd.DataFrame({"split": "train", "step": range(10), "loss": np.linspace(2, 1, 10)})
    return training.loss_curves(metrics)


def test_png_has_the_stated_pixel_size(figure):
    width, height = export.export_size(figure)
    assert png_size(export.figure_png(figure, scale=2)) == (2 * width, 2 * height)
    assert png_size(export.figure_png(figure, width=300, height=200, scale=1)) == (300, 200)


def test_svg_parses_and_has_the_stated_size(figure):
    width, height = export.export_size(figure)
    assert svg_size(export.figure_svg(figure)) == (width, height)


def test_html_is_self_contained(figure):
    html = export.figure_html(figure).decode()
    assert "<script src=\"https://cdn.plot.ly" not in html
    assert "Plotly.newPlot" in html and len(html) > 1_000_000  # plotly.js itself is inlined


def test_run_bundle_holds_figures_metrics_and_config(run_dir):
    from core.figures.run import run_figures

    figures = run_figures(run_dir)
    assert {"loss", "grad_norm", "h_res", "composite_gain", "h_pre_post"} <= set(figures)
    bundle = zipfile.ZipFile(io.BytesIO(export.run_bundle(run_dir, figures)))
    names = set(bundle.namelist())
    assert {"metrics.csv", "config.yaml", "figures.html", "figures/h_res.png", "figures/loss.svg"} <= names
    assert len([n for n in names if n.endswith(".png")]) == len(figures)
    import pandas as pd

    table = pd.read_csv(bundle.open("metrics.csv"))
    assert len(table) == 31 and table["loss"].dropna().iloc[0] == pytest.approx(2.0)
    width, height = export.export_size(figures["h_res"])
    assert png_size(bundle.read("figures/h_res.png")) == (2 * width, 2 * height)
    assert yaml.safe_load(bundle.read("config.yaml"))["model"]["kwargs"]["use_mhc"] is True


def test_cli_writes_the_same_figures_headless(run_dir, tmp_path, capsys):
    from core.__main__ import main

    code = main(["figures", str(run_dir), "--out", str(tmp_path / "figs"), "--formats", "svg", "png"])
    assert code == 0
    written = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert "h_res.svg" in written and "loss.png" in written
    assert svg_size((tmp_path / "figs" / "h_res.svg").read_bytes())[0] == 800
    assert "no eval/predictions.h5ad" in capsys.readouterr().out


def test_cli_names_a_missing_run_in_one_line(tmp_path, capsys):
    from core.__main__ import main

    code = main(["figures", str(tmp_path / "nope"), "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
