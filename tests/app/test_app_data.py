"""The Data page and the sidebar: the demo opens with nothing to set up, tables and figures hold the data's
own numbers, other column names work through the mapping, and bad files are refused in one plain line."""


import anndata as ad
import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest
from support import charts, unescaped

from core.errors import DataError

APP = "../../app/main.py"


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.setenv("ST_RUNS_DIR", str(tmp_path / "runs"))
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception
    return at






def sidebar_select(at, label):
    return next(s for s in at.sidebar.selectbox if s.label.startswith(label))


def test_demo_opens_ready_with_its_guessed_mapping(app, demo_adata):
    assert not app.error
    assert any("Ready to train" in s.value for s in app.success)
    assert sidebar_select(app, "Condition column").value == "condition"
    assert sidebar_select(app, "Control value").value == "sham"
    assert sidebar_select(app, "Cell-type column").value == "cell_types_simple_short"
    assert sidebar_select(app, "Embedding").value == "X_pca"
    # The summary table holds the demo's own counts (checked against an independent crosstab).
    table = app.dataframe[0].value
    expected = pd.crosstab(demo_adata.obs["cell_types_simple_short"], demo_adata.obs["condition"])
    got = table.groupby(level=0).sum()
    for cell_type in expected.index:
        assert got.loc[cell_type, "burn"] == expected.loc[cell_type, "burn"]
        assert got.loc[cell_type, "sham"] == expected.loc[cell_type, "sham"]


def test_umap_shows_every_cell_coloured_by_the_chosen_column(app, demo_adata):
    figure = charts(app)["UMAP coloured by cell_types_simple_short"]
    assert sorted(t["name"] for t in figure["data"]) == sorted(demo_adata.obs["cell_types_simple_short"].unique())
    assert sum(len(t["x"]) for t in figure["data"]) == demo_adata.n_obs
    fibro = next(t for t in figure["data"] if t["name"] == "Fibroblast")
    mask = (demo_adata.obs["cell_types_simple_short"] == "Fibroblast").to_numpy()
    np.testing.assert_allclose(np.sort(fibro["x"]), np.sort(demo_adata.obsm["X_umap"][mask, 0]), rtol=1e-6)
    app.selectbox(key="data_colour").set_value("condition").run()
    figure = charts(app)["UMAP coloured by condition"]
    assert sorted(t["name"] for t in figure["data"]) == ["burn", "sham"]


def test_precomputed_velocity_key_draws_grid_arrows(app):
    sidebar_select(app, "Velocity (obsm").set_value("true_velocity_pca").run()
    assert not app.exception and not app.error
    arrows = charts(app)["Velocity on the UMAP (grid-averaged, 25×25)"]
    assert any(t.get("name") == "velocity" for t in arrows["data"])
    app.radio(key="velocity_arrow_mode").set_value("per cell (subsample)").run()
    assert "Velocity on the UMAP (per cell, subsample)" in charts(app)


def test_velocity_streams_show_sham_and_burn_side_by_side_coloured_by_a_gene(app, demo_adata):
    import scipy.sparse

    sidebar_select(app, "Velocity (obsm").set_value("true_velocity_pca").run()
    gene = str(demo_adata.var_names[3])
    app.selectbox(key="data_gene").set_value(gene).run()
    assert not app.exception and not app.error
    column = demo_adata[:, [gene]].X
    expression = (column.toarray() if scipy.sparse.issparse(column) else np.asarray(column)).ravel()
    figures = charts(app)
    umap = figures[f"UMAP coloured by {gene} (X)"]
    np.testing.assert_allclose(umap["data"][0]["marker"]["color"], expression, rtol=1e-6)
    # the arrow panel follows the colour choice: its cells carry the same values
    arrows = figures["Velocity on the UMAP (grid-averaged, 25×25)"]
    np.testing.assert_allclose(arrows["data"][0]["marker"]["color"], expression, rtol=1e-6)
    stream = figures[f"Velocity streamlines on the UMAP, coloured by {gene} (X)"]
    counts = demo_adata.obs["condition"].value_counts()
    assert [a["text"] for a in stream["layout"]["annotations"]] == [f"sham ({counts['sham']:,} cells)",
                                                                    f"burn ({counts['burn']:,} cells)"]
    lines = [t for t in stream["data"] if t.get("name") == "velocity streamlines"]
    assert [t.get("xaxis", "x") for t in lines] == ["x", "x2"] and all(len(t["x"]) > 100 for t in lines)
    markers = [t for t in stream["data"] if t.get("mode") == "markers"]
    assert {(t["marker"]["cmin"], t["marker"]["cmax"]) for t in markers} == {(expression.min(), expression.max())}


def test_velocity_figures_are_built_once_per_input_not_on_every_rerun(app, monkeypatch):
    import core.figures.stream
    import core.figures.velocity
    from app import cache

    builds = []

    def counting(name, build):
        def counted(*args, **kwargs):
            builds.append(name)
            return build(*args, **kwargs)
        return counted

    for module, name in ((core.figures.velocity, "arrows_figure"), (core.figures.stream, "stream_figure")):
        monkeypatch.setattr(module, name, counting(name, getattr(module, name)))
    cache.velocity_arrows_figure.clear()
    cache.velocity_stream_figure.clear()
    sidebar_select(app, "Velocity (obsm").set_value("true_velocity_pca").run()
    assert sorted(builds) == ["arrows_figure", "stream_figure"]
    app.run()  # a rerun with the same inputs (another widget, a page switch back): nothing rebuilt
    assert not app.exception and sorted(builds) == ["arrows_figure", "stream_figure"]
    app.slider(key="velocity_grid").set_value(30).run()  # a new input: both rebuilt, the figures follow it
    assert sorted(builds) == ["arrows_figure"] * 2 + ["stream_figure"] * 2
    assert "Velocity on the UMAP (grid-averaged, 30×30)" in charts(app)


def test_a_wrong_mapping_is_reported_as_errors_not_a_crash(app):
    # condition as the cell type: each "cell type" then holds one condition only, so nothing can train
    sidebar_select(app, "Cell-type column").set_value("condition").run()
    assert not app.exception
    errors = [unescaped(e.value) for e in app.error]
    assert errors and all("\n" not in e for e in errors)  # the validator's own one-line messages
    assert any("condition" in e for e in errors)
    assert not any("Ready to train" in s.value for s in app.success)


def test_upload_limit_is_stated_in_the_sidebar(app):
    app.sidebar.radio(key="data_source").set_value("Upload a .h5ad file").run()
    limit = app.sidebar.file_uploader[0]
    assert "at most 500 MB" in limit.label
    assert any("Upload limit: 500 MB" in c.value for c in app.sidebar.caption)


@pytest.mark.parametrize("kind, expected", [("csv", "not an .h5ad (HDF5) file"), ("truncated", "truncated"),
                                            ("declares 200 GB", "more than the memory budget")])
def test_bad_upload_is_refused_in_one_line_and_not_kept(app, tmp_path, demo_adata, kind, expected):
    if kind == "csv":
        content = b"cell,condition\nA,sham\n"
    elif kind.startswith("declares"):  # a small file whose obsm declares 50 x 10^9 float32, storing nothing
        import h5py

        demo_adata[:50].copy().write_h5ad(tmp_path / "bomb.h5ad")
        with h5py.File(tmp_path / "bomb.h5ad", "a") as f:
            f["obsm"].create_dataset("X_bomb", shape=(50, 10**9), dtype="float32", chunks=(1, 1024))
        content = (tmp_path / "bomb.h5ad").read_bytes()
    else:
        demo_adata[:50].copy().write_h5ad(tmp_path / "whole.h5ad")
        content = (tmp_path / "whole.h5ad").read_bytes()[:3000]
    app.sidebar.radio(key="data_source").set_value("Upload a .h5ad file").run()
    app.sidebar.file_uploader[0].upload("cells.h5ad", content).run()
    assert not app.exception
    messages = [unescaped(e.value) for e in app.sidebar.error]
    assert len(messages) == 1 and expected in messages[0]
    assert "\n" not in messages[0]
    assert messages[0].startswith("cells.h5ad ") and ".uploads" not in messages[0]  # the user's name, not ours
    uploads = tmp_path / "runs" / ".uploads"
    assert not uploads.exists() or not list(uploads.iterdir())


def test_upload_with_other_column_names_works_through_the_mapping(app, demo_adata, tmp_path):
    keep = np.random.default_rng(0).choice(demo_adata.n_obs, 600, replace=False)
    small = demo_adata[np.sort(keep)].copy()
    small.obs = pd.DataFrame({
        "treatment": small.obs["condition"].map({"sham": "control", "burn": "burn"}).astype("category"),
        "celltype": small.obs["cell_types_simple_short"].astype("category"),
        "donor": small.obs["mouse_id"].astype("category"),
    }, index=small.obs_names)
    small.obsm = {"X_emb": small.obsm["X_pca"], "X_umap": small.obsm["X_umap"]}
    small.layers = {}
    path = tmp_path / "renamed.h5ad"
    small.write_h5ad(path)
    app.sidebar.radio(key="data_source").set_value("Upload a .h5ad file").run()
    app.sidebar.file_uploader[0].upload("renamed.h5ad", path.read_bytes()).run()
    assert not app.exception and not app.error
    assert sidebar_select(app, "Condition column").value == "treatment"
    assert sidebar_select(app, "Control value").value == "control"
    assert sidebar_select(app, "Cell-type column").value == "celltype"
    assert sidebar_select(app, "Embedding").value == "X_emb"
    saved = list((tmp_path / "runs" / ".uploads").iterdir())
    assert len(saved) == 1 and ad.read_h5ad(saved[0]).n_obs == 600
    # guessed, so not yet "Ready": the user confirms the guesses first
    assert sidebar_select(app, "Condition column").label.endswith("guessed")
    assert not any("Ready to train" in s.value for s in app.success)
    next(b for b in app.sidebar.button if b.label == "Confirm the guessed fields").click().run()
    assert any("Ready to train" in s.value for s in app.success)
    assert any("has the genes of the base's obsm['X_pca'] but no loadings" in unescaped(w.value) for w in app.warning)


def test_a_demo_that_cannot_load_says_why_in_the_main_area_once(tmp_path, monkeypatch):
    """The demo is loaded in the main area, not inside the sidebar's closed mapping expander, so its spinner
    (minutes on a first start) and any failure are where the user looks; the pages then ask for a data set
    instead of failing a second time."""
    import core.data.demo
    from app import cache

    def refused(*args, **kwargs):
        raise DataError("the data cache folder /nowhere is not writable; set ST_DATA_CACHE to a folder you own")

    monkeypatch.setenv("ST_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setattr(core.data.demo, "load_demo", refused)
    cache.demo_adata.clear()
    try:
        at = AppTest.from_file(APP, default_timeout=120)
        at.run()
    finally:
        cache.demo_adata.clear()  # the other tests load the real demo
    assert not at.exception
    main_errors = [unescaped(e.value) for e in at.main.error]
    assert main_errors == ["the data cache folder /nowhere is not writable; set ST_DATA_CACHE to a folder you own"]
    assert not at.sidebar.error
    assert any("Choose a data set in the sidebar." in i.value for i in at.main.info)


def test_server_path_that_does_not_exist_says_so(app, tmp_path):
    app.sidebar.radio(key="data_source").set_value("A .h5ad path on the server").run()
    # inside the runs folder, a data root: outside the roots the app does not say whether a path exists
    app.sidebar.text_input(key="server_path").set_value(str(tmp_path / "runs" / "missing.h5ad")).run()
    assert not app.exception
    assert any("no file at" in unescaped(e.value) for e in app.sidebar.error)


def test_computed_velocity_is_shown_and_saved_into_a_copy_for_training(app, demo_with_velocity, tmp_path):
    # demo_with_velocity has run the same pipeline with the same settings, so this reads core's cache.
    app.radio(key="velocity_source").set_value("Compute from spliced/unspliced counts").run()
    next(b for b in app.button if b.label == "Compute velocity").click().run()
    assert not app.exception and not app.error
    assert app.get("progress")[0].value == 100
    # the imports and the copy are timed apart from the pipeline (they were the silent "Starting…" phase)
    took = next(c.value for c in app.caption if c.value.startswith("Where the time went: "))
    assert "loading scanpy and scvelo" in took and "copying the data set" in took
    assert "loaded from cache" in took  # the fixture computed it with these settings
    confidence = charts(app)
    title = next(t for t in confidence if t.startswith("Velocity confidence"))
    assert title == f"Velocity confidence, median {np.median(demo_with_velocity.obs['velocity_confidence']):.2f}"
    app.button(key="velocity_save_copy").click().run()
    assert not app.exception and not app.error
    copy_path = app.sidebar.text_input(key="server_path").value
    assert copy_path.startswith(str(tmp_path / "runs" / ".uploads"))
    assert sidebar_select(app, "Velocity (obsm").value == "velocity_pca"
    assert sidebar_select(app, "Velocity confidence").value == "velocity_confidence"
    saved = ad.read_h5ad(copy_path)
    np.testing.assert_allclose(saved.obsm["velocity_pca"], demo_with_velocity.obsm["velocity_pca"], rtol=1e-6)


def test_a_server_file_opens_with_its_counts_on_disk_and_velocity_computes_from_them(app, demo_with_velocity,
                                                                                      tmp_path):
    # the demo's counts written as a user's file: the sidebar reads it backed, its layers left on disk
    from anndata.abc import CSRDataset

    from app.cache import path_adata
    from core.data.demo import load_demo

    base = load_demo("burn_sham")
    path = tmp_path / "runs" / "counts.h5ad"
    path.parent.mkdir(parents=True, exist_ok=True)
    base.write_h5ad(path)
    app.sidebar.radio(key="data_source").set_value("A .h5ad path on the server").run()
    app.sidebar.text_input(key="server_path").set_value(str(path)).run()
    assert not app.exception and not app.error
    assert any(t.value == f"File: counts.h5ad: {base.n_obs:,} cells × {base.n_vars:,} genes." for t in app.text)
    opened = path_adata(str(path), path.stat().st_mtime)
    assert isinstance(opened.layers["spliced"], CSRDataset) and isinstance(opened.layers["unspliced"], CSRDataset)
    scatter = next(s for title, s in charts(app).items() if title.startswith("UMAP coloured by"))
    assert sum(len(trace["x"]) for trace in scatter["data"]) == base.n_obs  # every cell, in WebGL
    assert {trace["type"] for trace in scatter["data"]} == {"scattergl"}
    # no velocity in the file: nothing is computed until asked
    assert any("No velocity key is chosen" in i.value for i in app.info)
    app.radio(key="velocity_source").set_value("Compute from spliced/unspliced counts").run()
    next(b for b in app.button if b.label == "Compute velocity").click().run()
    assert not app.exception and not app.error
    title = next(t for t in charts(app) if t.startswith("Velocity confidence"))
    assert title == f"Velocity confidence, median {np.median(demo_with_velocity.obs['velocity_confidence']):.2f}"


def test_arrows_of_a_large_file_come_from_a_fixed_sample_and_say_so(app, demo_with_velocity, tmp_path,
                                                                     monkeypatch):
    # The kNN graph under the arrows is what costs on 100,000 cells; above MAX_ARROW_CELLS the Data page projects
    # a fixed sample's velocities. 5,000 here stands in for 20,000, on the 12,000-cell demo written as a file.
    from app import cache
    from core.figures.arrows import project_to_2d
    from core.figures.style import subsample_index
    from core.figures.velocity import arrows_figure

    monkeypatch.setattr(cache, "MAX_ARROW_CELLS", 5_000)
    path = tmp_path / "runs" / "with_velocity.h5ad"
    path.parent.mkdir(parents=True, exist_ok=True)
    demo_with_velocity.write_h5ad(path)
    app.sidebar.radio(key="data_source").set_value("A .h5ad path on the server").run()
    app.sidebar.text_input(key="server_path").set_value(str(path)).run()
    sidebar_select(app, "Velocity (obsm").set_value("velocity_pca").run()
    assert not app.exception and not app.error
    n = demo_with_velocity.n_obs
    assert any(c.value.startswith(f"Arrows and streamlines from 5,000 of {n:,} cells") for c in app.caption)
    shown = charts(app)
    drawn = shown["Velocity on the UMAP (grid-averaged, 25×25)"]
    # the same arrows as projecting the sample's own velocities with neighbours among the sample
    from sklearn.neighbors import NearestNeighbors

    rows = subsample_index(n, 5_000, seed=0)
    latent = np.asarray(demo_with_velocity.obsm["X_pca"], dtype=np.float32)[rows]
    neighbours = NearestNeighbors(n_neighbors=31).fit(latent).kneighbors(latent, return_distance=False)[:, 1:]
    expected_arrows = project_to_2d(latent, demo_with_velocity.obsm["velocity_pca"][rows],
                                    demo_with_velocity.obsm["X_umap"][rows], neighbours=neighbours)
    expected = arrows_figure(demo_with_velocity.obsm["X_umap"][rows], {"velocity": expected_arrows},
                             colour_values=demo_with_velocity.obs["cell_types_simple_short"].iloc[rows])
    ours = next(t for t in drawn["data"] if t.get("name") == "velocity")
    theirs = next(t for t in expected.data if t.name == "velocity")
    np.testing.assert_allclose(np.asarray(ours["x"], dtype=float), np.asarray(theirs.x, dtype=float), rtol=1e-5,
                               equal_nan=True)
    # the sampled cells underneath, each cell type in the colour the full embedding beside it gives it
    cells = [t for t in drawn["data"] if t.get("mode") == "markers"]
    assert sum(len(t["x"]) for t in cells) == 5_000
    beside = next(s for title, s in shown.items() if title.startswith("UMAP coloured by"))
    colour_of = {t["name"]: t["marker"]["color"] for t in beside["data"]}
    assert {t["name"]: t["marker"]["color"] for t in cells} == colour_of
