"""Export page: every figure of a run as PNG, SVG and self-contained HTML, and the run as one zip."""

import re

import streamlit as st

from app import cache
from app.components import run_path, run_picker
from app.guard import shown_errors
from app.panels.delta import run_dataset
from core.figures import export
from core.figures.run import data_kwargs, run_figures
from core.runs import list_runs

st.title("Export")
runs = list_runs()
if not runs:
    st.info("No runs yet: launch one on the Train page.")
    st.stop()
run = run_picker(runs, "Run", key="export_run")
path = run_path(run)
st.caption("Figures use the publication style (Okabe-Ito colours, labelled axes with units). PNG is 1600 px "
           "wide (800 px at 2× scale), SVG is vector, HTML opens offline and stays interactive.")


@st.cache_resource(max_entries=4, show_spinner="Building the run's figures…")
def _figures(run_dir: str, stamp: tuple, dataset: cache.DatasetRef | None):
    return run_figures(run_dir, adata=cache.load_dataset(dataset) if dataset else None)


def _stamp(run_dir) -> tuple:
    files = [run_dir / "metrics.jsonl", run_dir / "eval" / "predictions.h5ad", run_dir / "mhc"]
    return tuple((f.stat().st_mtime if f.exists() else 0.0) for f in files)


with shown_errors("building the run's figures"):
    with_velocity = (path / "eval" / "predictions.h5ad").is_file()
    dataset = run_dataset(data_kwargs(run["config"])) if with_velocity else None
    figures = _figures(str(path), _stamp(path), dataset)
    st.subheader(f"Figures of {run['name']} ({len(figures)})")
    for name, fig in figures.items():
        label, png, svg, html = st.columns([3, 1, 1, 1], vertical_alignment="center")
        title = fig.layout.title.text or name
        label.markdown(f"**{name}**  \n{re.sub(r'<[^>]+>', '', title)}")
        for column, fmt in ((png, "png"), (svg, "svg"), (html, "html")):
            column.download_button(fmt.upper(), data=lambda fig=fig, fmt=fmt: export.figure_bytes(fig, fmt),
                                   file_name=f"{run['name']}_{name}.{fmt}", mime=export.MIME[fmt],
                                   key=f"export_{name}_{fmt}", on_click="ignore")

    st.subheader("Run bundle")
    included = ["figures (PNG + SVG each, all in one figures.html)", "metrics.csv", "config.yaml"]
    if (path / "eval" / "metrics.json").is_file():
        included += ["eval/metrics.json", "eval/per_cell_type.csv"]
    if with_velocity:
        included.append("predictions.h5ad")
    st.write("One zip with " + ", ".join(included) + ".")
    st.download_button("Download the run bundle (.zip)", data=lambda: export.run_bundle(path, figures),
                       file_name=f"{run['name']}_bundle.zip", mime=export.MIME["zip"], key="export_bundle",
                       type="primary", on_click="ignore")
