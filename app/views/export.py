"""Export page: every figure of a run as PNG, SVG and self-contained HTML, and the run as one zip."""

import re

import streamlit as st

from app import cache, state
from app.components import run_path, run_picker
from app.guard import shown_errors
from app.panels.delta import run_dataset
from core.figures import export
from core.figures.run import data_kwargs, run_figures
from core.figures.training import default_smoothing
from core.runs import list_runs

st.title("Export")
st.caption("Figures use the publication style (Okabe-Ito colours, labelled axes with units). PNG is 1600 px "
           "wide (800 px at 2× scale), SVG is vector, HTML opens offline and stays interactive.")


@st.cache_resource(max_entries=4, show_spinner="Building the run's figures…")
def _figures(run_dir: str, stamp: tuple, dataset: cache.DatasetRef | None, log_y: bool, smoothing: float):
    return run_figures(run_dir, adata=cache.load_dataset(dataset) if dataset else None, log_y=log_y,
                       smoothing=smoothing)


def _view(run: dict) -> tuple[bool, float]:
    """The Train page's view of this run (log-scale loss, smoothing) if it was shown there, else its
    defaults, so a file looks like the figure on screen."""
    view = state.RUN_VIEW.get()
    if view.get("run") == run["name"]:
        return bool(view["log_y"]), float(view["smoothing"])
    return True, default_smoothing(run["status"].get("total_steps"))


def _stamp(run_dir) -> tuple:
    files = [run_dir / "metrics.jsonl", run_dir / "eval" / "predictions.h5ad", run_dir / "mhc"]
    return tuple((f.stat().st_mtime if f.exists() else 0.0) for f in files)


def _download_rows(figures: dict, prefix: str, key: str) -> None:
    for name, fig in figures.items():
        label, png, svg, html = st.columns([3, 1, 1, 1], vertical_alignment="center")
        title = re.sub(r"<[^>]+>", "", fig.layout.title.text or name)
        label.text(f"{name}: {title}")  # as text: titles can hold a user's column names
        for column, fmt in ((png, "png"), (svg, "svg"), (html, "html")):
            column.download_button(fmt.upper(), data=lambda fig=fig, fmt=fmt: export.figure_bytes(fig, fmt),
                                   file_name=f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', prefix + '_' + name)}.{fmt}",
                                   mime=export.MIME[fmt], key=f"{key}_{name}_{fmt}", on_click="ignore")


def _run_section(run: dict) -> None:
    path = run_path(run)
    with_velocity = (path / "eval" / "predictions.h5ad").is_file()
    dataset = run_dataset(data_kwargs(run["config"])) if with_velocity else None
    log_y, smoothing = _view(run)
    figures = _figures(str(path), _stamp(path), dataset, log_y, smoothing)
    st.subheader(f"Figures of {run['name']} ({len(figures)})")
    st.caption(f"As on the Train page: loss on a {'log' if log_y else 'linear'} axis, smoothing {smoothing:g}.")
    _download_rows(figures, run["name"], "export")

    st.subheader("Run bundle")
    included = ["figures (PNG + SVG each, all in one figures.html)", "metrics.csv", "config.yaml"]
    if (path / "eval" / "metrics.json").is_file():
        included += ["eval/metrics.json", "eval/per_cell_type.csv"]
    if with_velocity:
        included.append("predictions.h5ad")
    included += ["log.txt, status, split.csv, load report, perturbation map, embedding fingerprint, environment"]
    if list((path / "mhc").glob("step_*.npz")) if (path / "mhc").is_dir() else []:
        included.append("mHC snapshots (mhc/step_*.npz)")
    st.write("One zip with " + ", ".join(included) + ".")
    present = [c for c in export.CHECKPOINTS if (path / "checkpoints" / f"{c}.ckpt").is_file()]
    choice = st.radio("Checkpoint", ["none"] + present, horizontal=True, key="export_checkpoint",
                      format_func=lambda c: c if c == "none" else f"{c}.ckpt ("
                      f"{(path / 'checkpoints' / f'{c}.ckpt').stat().st_size / 1e6:.1f} MB)")
    checkpoint = None if choice == "none" else choice
    st.download_button("Download the run bundle (.zip)",
                       data=lambda: export.run_bundle(path, figures, checkpoint=checkpoint),
                       file_name=f"{run['name']}_bundle.zip", mime=export.MIME["zip"], key="export_bundle",
                       type="primary", on_click="ignore")


runs = list_runs()
if not runs:
    st.info("No runs yet: launch one on the Train page.")
else:
    run = run_picker(runs, "Run", key="export_run")
    with shown_errors("building the run's figures"):
        _run_section(run)

for page in ("Data", "Compare"):
    shown = state.SHOWN_FIGURES.get().get(page) or {}
    st.subheader(f"Figures of the {page} page ({len(shown)})")
    if not shown:
        st.caption(f"None yet: the figures of the {page} page appear here, as last shown, once you open it.")
        continue
    st.caption(f"As last shown on the {page} page (its colours, axes and choices).")
    _download_rows(shown, page.lower(), f"export_{page.lower()}")
