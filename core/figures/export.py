"""Figures to files: PNG and SVG (via kaleido and the system's Chromium), self-contained HTML, and the
zip bundle of a run (figures, metrics CSV, config YAML, evaluation tables, predictions ``.h5ad``).

Sizes: a figure exports at its own ``layout.height`` (else ``EXPORT_HEIGHT``) and ``EXPORT_WIDTH`` CSS
pixels; PNG is rendered at ``scale`` (2 by default, so a 800 x 500 figure gives a 1600 x 1000 px image,
about 300 dpi at 13 cm); SVG keeps CSS pixel units.
"""

from __future__ import annotations

import functools
import io
import threading
import warnings
import zipfile
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio

from core.errors import UserError
from core.figures.style import EXPORT_HEIGHT, EXPORT_WIDTH

FORMATS = ("png", "svg", "html")
MIME = {"png": "image/png", "svg": "image/svg+xml", "html": "text/html", "zip": "application/zip"}

_server_lock = threading.Lock()


class ExportError(UserError):
    """A static image cannot be rendered on this machine (no Chromium for kaleido)."""


@functools.cache  # once per process (the browser belongs to it); called under _server_lock, so never twice at once
def _ensure_image_server() -> None:
    """Start kaleido's browser once per process: each later image then takes ~0.2 s instead of ~2.5 s.

    MathJax is off because kaleido would otherwise fetch it from a CDN (no internet here). A failure is not
    cached (functools.cache keeps only returned values), so installing Chromium and retrying works.
    """
    import kaleido

    try:
        kaleido.start_sync_server(mathjax=False, silence_warnings=True)
    except Exception as err:  # kaleido raises its own types for a missing or broken browser
        raise ExportError(
            "PNG/SVG export needs Chromium: install it (Debian/Ubuntu: 'sudo apt-get install chromium') "
            f"or set BROWSER_PATH to a Chrome/Chromium binary ({type(err).__name__}: {err})"
        ) from err


def export_size(fig: go.Figure, width: int | None = None, height: int | None = None) -> tuple[int, int]:
    return int(width or fig.layout.width or EXPORT_WIDTH), int(height or fig.layout.height or EXPORT_HEIGHT)


def _image(fig: go.Figure, fmt: str, width: int | None, height: int | None, scale: float) -> bytes:
    w, h = export_size(fig, width, height)
    with _server_lock:
        _ensure_image_server()
        with warnings.catch_warnings():
            # plotly passes kaleido options that a running server ignores; the size still applies.
            warnings.filterwarnings("ignore", message="The kopts argument is ignored")
            try:
                return pio.to_image(fig, format=fmt, width=w, height=h, scale=scale)
            except Exception as err:
                raise ExportError(f"Could not render the figure as {fmt.upper()} ({type(err).__name__}: "
                                  f"{err}); check that Chromium is installed and runs headless") from err


def figure_png(fig: go.Figure, width: int | None = None, height: int | None = None,
               scale: float = 2) -> bytes:
    return _image(fig, "png", width, height, scale)


def figure_svg(fig: go.Figure, width: int | None = None, height: int | None = None) -> bytes:
    return _image(fig, "svg", width, height, 1)


def figure_html(fig: go.Figure) -> bytes:
    """A complete HTML page with plotly.js inlined: it opens offline, years later (about 4.8 MB)."""
    return pio.to_html(fig, include_plotlyjs=True, full_html=True).encode("utf-8")


def figure_bytes(fig: go.Figure, fmt: str) -> bytes:
    if fmt == "png":
        return figure_png(fig)
    if fmt == "svg":
        return figure_svg(fig)
    if fmt == "html":
        return figure_html(fig)
    raise UserError(f"Unknown figure format '{fmt}': choose one of {', '.join(FORMATS)}")


def figures_html(figures: dict[str, go.Figure], title: str = "Figures") -> bytes:
    """All figures on one self-contained page, plotly.js inlined once."""
    parts = []
    for i, (name, fig) in enumerate(figures.items()):
        div = pio.to_html(fig, include_plotlyjs=(i == 0), full_html=False, div_id=f"fig-{name}")
        parts.append(f"<section><h2>{name}</h2>{div}</section>")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>"
            "<style>body{font-family:Arial,Helvetica,sans-serif;max-width:1000px;margin:auto}</style>"
            f"</head><body><h1>{title}</h1>{''.join(parts)}</body></html>")
    return page.encode("utf-8")


def write_figures(figures: dict[str, go.Figure], out_dir: Path, formats=FORMATS) -> list[Path]:
    """Write each figure as ``<out_dir>/<name>.<fmt>``; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in figures.items():
        for fmt in formats:
            path = out_dir / f"{name}.{fmt}"
            path.write_bytes(figure_bytes(fig, fmt))
            written.append(path)
    return written


# Files of a run folder that go into its bundle when present: what it was asked to do (config), what it did
# (log, status, summary, load report, the split), and what it needs to be read again (perturbation map,
# embedding fingerprint, environment).
BUNDLE_FILES = ("config.yaml", "log.txt", "status.json", "train_summary.json", "load_report.json", "split.csv",
                "pert_map.json", "embedding.json", "env.json", "tags.json", "eval/metrics.json",
                "eval/per_cell_type.csv")
CHECKPOINTS = ("best", "final", "last")


def run_bundle(run_dir: Path, figures: dict[str, go.Figure], image_formats=("png", "svg"),
               checkpoint: str | None = None) -> bytes:
    """A zip of one run: figures (each as PNG and SVG, all in one ``figures.html``), ``metrics.csv``, the
    run's own files (``BUNDLE_FILES``), its mHC snapshots (``mhc/step_*.npz``), ``predictions.h5ad`` where
    the run has them, and with ``checkpoint`` ("best", "final" or "last") that checkpoint."""
    from core.errors import UserError
    from core.runs import list_mhc_snapshots, read_metrics

    run_dir = Path(run_dir)
    if checkpoint is not None:
        if checkpoint not in CHECKPOINTS:
            raise UserError(f"checkpoint must be one of {CHECKPOINTS}; got {checkpoint!r}")
        if not (run_dir / "checkpoints" / f"{checkpoint}.ckpt").is_file():
            raise UserError(f"run {run_dir.name} has no checkpoints/{checkpoint}.ckpt")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for name, fig in figures.items():
            for fmt in image_formats:
                bundle.writestr(f"figures/{name}.{fmt}", figure_bytes(fig, fmt))
        bundle.writestr("figures.html", figures_html(figures, title=f"Run {run_dir.name}"))
        metrics = read_metrics(run_dir)
        bundle.writestr("metrics.csv", metrics.to_csv(index=False))
        for relative in BUNDLE_FILES:
            if (run_dir / relative).is_file():
                bundle.write(run_dir / relative, relative)
        for _, snapshot in list_mhc_snapshots(run_dir):
            bundle.write(snapshot, f"mhc/{snapshot.name}", compress_type=zipfile.ZIP_STORED)
        predictions = run_dir / "eval" / "predictions.h5ad"
        if predictions.is_file():
            # .h5ad is already compressed HDF5; deflating it again only costs time.
            bundle.write(predictions, "predictions.h5ad", compress_type=zipfile.ZIP_STORED)
        if checkpoint is not None:
            bundle.write(run_dir / "checkpoints" / f"{checkpoint}.ckpt", f"checkpoints/{checkpoint}.ckpt")
    return buffer.getvalue()
