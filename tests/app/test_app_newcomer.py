"""A newcomer's own file in the app: nothing the guesser could not know is filled in for them, guesses are
marked until confirmed, and the Data page's "Ready" means that Launch works with the Train page's settings
(set size, base model) rather than failing seconds after the launch."""


import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest
from support import started_app, unescaped

APP = "../../app/main.py"


@pytest.fixture(scope="module")
def pbmc_file(tmp_path_factory):
    """scanpy's bundled PBMC (no download) as a user would upload it: cell types, no condition column."""
    import scanpy as sc

    path = tmp_path_factory.mktemp("pbmc") / "pbmc 68k (mine).h5ad"
    sc.datasets.pbmc68k_reduced().write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def pbmc_with_treatment(tmp_path_factory):
    """The same cells with an invented ctrl/stim treatment and a donor column."""
    import scanpy as sc

    a = sc.datasets.pbmc68k_reduced()
    rng = np.random.default_rng(0)
    a.obs["treatment"] = pd.Categorical(rng.choice(["ctrl", "stim"], a.n_obs))
    a.obs["donor"] = pd.Categorical(rng.choice(["d1", "d2", "d3"], a.n_obs))
    path = tmp_path_factory.mktemp("pbmc_t") / "pbmc_treated.h5ad"
    a.write_h5ad(path)
    return path, a


@pytest.fixture
def app(tmp_path, monkeypatch):
    at = started_app(monkeypatch, tmp_path / "runs")
    assert not at.exception
    return at


def upload(at, path):
    at.sidebar.radio(key="data_source").set_value("Upload a .h5ad file").run()
    at.sidebar.file_uploader[0].upload(path.name, path.read_bytes()).run()
    assert not at.exception


def select(at, label):
    return next(s for s in at.sidebar.selectbox if s.label.startswith(label))


def texts(at) -> list[str]:
    return [e.value for kind in ("success", "info", "warning", "error") for e in getattr(at, kind)]


def test_a_file_without_a_condition_column_is_never_ready(app, pbmc_file):
    upload(app, pbmc_file)
    assert select(app, "Condition column").value == "(choose…)"
    assert select(app, "Control value").value == "(choose…)" and select(app, "Control value").disabled
    assert select(app, "Cell-type column").value == "(choose…)"
    assert not any("Ready to train" in s.value for s in app.success)
    assert any("Choose the condition column, control value and cell-type column" in unescaped(w.value)
               for w in app.warning)
    app.switch_page("views/train.py").run()
    launch = next(b for b in app.button if b.label == "Launch")
    assert launch.disabled
    assert any("Launch is disabled: choose the condition column" in unescaped(w.value) for w in app.warning)


def test_cell_types_chosen_as_the_condition_warn_and_an_odd_control_warns(app, pbmc_file):
    upload(app, pbmc_file)
    select(app, "Condition column").set_value("bulk_labels").run()
    select(app, "Control value").set_value("CD4+/CD25 T Reg").run()
    select(app, "Cell-type column").set_value("phase").run()
    warnings = [unescaped(w.value) for w in app.warning]
    assert any("'bulk_labels' has 10 values" in w for w in warnings)
    assert any("'CD4+/CD25 T Reg' does not look like a control" in w for w in warnings)


def test_guesses_are_marked_until_confirmed(app, pbmc_with_treatment):
    path, adata = pbmc_with_treatment
    upload(app, path)
    assert select(app, "Condition column").value == "treatment"
    assert select(app, "Condition column").label.endswith("guessed")
    assert select(app, "Control value").value == "ctrl" and select(app, "Control value").label.endswith("guessed")
    # no column is named like a cell type: the user must choose one
    assert select(app, "Cell-type column").value == "(choose…)"
    select(app, "Cell-type column").set_value("bulk_labels").run()
    assert not select(app, "Cell-type column").label.endswith("guessed")
    assert not any("Ready to train" in s.value for s in app.success)
    assert any("guessed: check and confirm them" in i.value for i in app.info)
    next(b for b in app.sidebar.button if b.label == "Confirm the guessed fields").click().run()
    assert not any(s.label.endswith("guessed") for s in app.sidebar.selectbox)
    assert not any("guessed" in t for t in texts(app))


def test_the_check_uses_the_train_pages_set_size_and_base(app, pbmc_with_treatment):
    path, adata = pbmc_with_treatment
    upload(app, path)
    select(app, "Cell-type column").set_value("bulk_labels").run()
    next(b for b in app.sidebar.button if b.label == "Confirm the guessed fields").click().run()
    # the default set size (32) leaves out the cell types with fewer cells on one side
    counts = pd.crosstab(adata.obs["bulk_labels"], adata.obs["treatment"]).min(axis=1)
    too_small = sorted(counts[counts < 32].index)
    assert too_small
    warnings = [unescaped(w.value) for w in app.warning]
    for cell_type in too_small:
        assert any(f"cell type '{cell_type}' has" in w and "set size 32" in w for w in warnings), cell_type
    # the demo base was trained in the demo's PCA, not in this file's
    assert any("is not the space the base was trained in" in w for w in warnings)
    assert any("set size 32, base model the demo base (trained on obsm['X_pca'], 50-d)" in c.value
               for c in app.caption)
    # a set size no cell type can fill is an error on both pages, and Launch says why it is disabled
    app.switch_page("views/train.py").run()
    app.number_input(key="tf_set").set_value(500).run()
    launch = next(b for b in app.button if b.label == "Launch")
    assert launch.disabled
    disabled = "Launch is disabled: no cell type has enough control and perturbed cells for set size 500"
    assert any(disabled in unescaped(w.value) for w in app.warning)
    app.switch_page("views/data.py").run()
    assert any("for set size 500" in unescaped(e.value) for e in app.error)
    assert not any("Ready to train" in s.value for s in app.success)
    # from scratch with a small set size: no base to disagree with, every cell type usable
    app.switch_page("views/train.py").run()
    app.radio(key="tf_base").set_value("From scratch").run()
    app.number_input(key="tf_set").set_value(int(counts.min())).run()
    assert not next(b for b in app.button if b.label == "Launch").disabled
    app.switch_page("views/data.py").run()
    assert any("Ready to train" in s.value for s in app.success)


def test_an_embedding_of_another_size_than_the_base_blocks_launch(app, pbmc_with_treatment, tmp_path):
    path, adata = pbmc_with_treatment
    small = adata.copy()
    small.obsm["X_pca"] = small.obsm["X_pca"][:, :30]
    small.varm["PCs"] = small.varm["PCs"][:, :30]
    small.obs["cell_type"] = small.obs["bulk_labels"]
    thirty = tmp_path / "pbmc30.h5ad"
    small.write_h5ad(thirty)
    upload(app, thirty)
    next(b for b in app.sidebar.button if b.label == "Confirm the guessed fields").click().run()
    assert any("has 30 dimensions but the base model expects 50" in unescaped(e.value) for e in app.error)
    app.switch_page("views/train.py").run()
    assert next(b for b in app.button if b.label == "Launch").disabled
    assert any("Launch is disabled: the embedding has 30 dimensions" in unescaped(w.value) for w in app.warning)


def test_the_upload_is_named_by_the_users_file_name_not_its_hash(app, pbmc_file):
    upload(app, pbmc_file)
    shown = [t.value for t in app.sidebar.text] + [t.value for t in app.text]
    assert any(pbmc_file.name in t for t in shown)
    assert not any(".uploads" in t or len(t) > 64 and all(c in "0123456789abcdef" for c in t[:64]) for t in shown)


def reload(at) -> AppTest:
    """A browser reload: a new session that only keeps the page's URL (its query parameters)."""
    fresh = AppTest.from_file(APP, default_timeout=180)
    for key, value in at.query_params.items():
        fresh.query_params[key] = value
    fresh.run()
    assert not fresh.exception
    return fresh


def test_an_upload_and_its_mapping_choices_survive_a_reload(app, pbmc_with_treatment):
    path, _ = pbmc_with_treatment
    upload(app, path)
    select(app, "Cell-type column").set_value("bulk_labels").run()
    select(app, "Batch column").set_value("(none)").run()  # the guess was 'donor'
    assert select(app, "Condition column").label.endswith("guessed")
    assert app.query_params["name"] == [path.name] or app.query_params["name"] == path.name
    after = reload(app)
    assert after.sidebar.radio(key="data_source").value == "Upload a .h5ad file"
    assert any(f"Using your earlier upload {path.name}" in t.value for t in after.sidebar.text)
    assert select(after, "Cell-type column").value == "bulk_labels"
    assert not select(after, "Cell-type column").label.endswith("guessed")
    assert select(after, "Batch column").value == "(none)"
    # an unconfirmed guess comes back as a guess, not as the user's choice
    assert select(after, "Condition column").value == "treatment"
    assert select(after, "Condition column").label.endswith("guessed")
    assert after.text[0].value.startswith(f"Upload: {path.name}: 700 cells")


def test_a_demo_mapping_edit_survives_a_reload(app):
    select(app, "Velocity (obsm").set_value("(none)").run()
    select(app, "Batch column").set_value("(none)").run()
    after = reload(app)
    assert select(after, "Batch column").value == "(none)"
    assert select(after, "Cell-type column").value == "cell_types_simple_short"


def test_a_url_naming_no_stored_upload_falls_back_to_choosing(tmp_path, monkeypatch):
    monkeypatch.setenv("ST_RUNS_DIR", str(tmp_path / "runs"))
    at = AppTest.from_file(APP, default_timeout=180)
    at.query_params["upload"] = "0" * 64
    at.query_params["name"] = "**bold** name.h5ad"
    at.run()
    assert not at.exception
    assert at.sidebar.radio(key="data_source").value == "Demo data"  # nothing restored from a stale link


def test_a_set_size_given_under_more_settings_is_checked_before_launch(app, tmp_path):
    # 1,500 cells a set fit the memory budget (4,000 would be refused for that first) but not the demo's cell types
    app.switch_page("views/train.py").run()
    app.text_area(key="tf_extra").set_value("model.kwargs.cell_set_len=1500")
    next(b for b in app.button if b.label == "Launch").click().run()
    assert not app.exception
    assert any("with the settings under 'More settings' (set size 1500, base demo): no cell type has enough"
               in unescaped(e.value) for e in app.error)
    runs = tmp_path / "runs"
    assert not runs.exists() or not [p for p in runs.iterdir() if not p.name.startswith(".")]


def test_switching_back_to_the_demo_drops_the_upload_from_the_url_and_keeps_other_parameters(app, pbmc_file):
    app.query_params["embed"] = "true"
    upload(app, pbmc_file)
    assert "upload" in app.query_params
    app.sidebar.radio(key="data_source").set_value("Demo data").run()
    params = dict(app.query_params)
    assert "upload" not in params and "name" not in params
    assert params["demo"] in ("burn_sham", ["burn_sham"]) and params["embed"] in ("true", ["true"])


def test_a_missing_base_checkpoint_disables_launch_with_its_one_line_reason(app, tmp_path):
    app.switch_page("views/train.py").run()
    app.radio(key="tf_base").set_value("A checkpoint or Arc State folder on the server").run()
    assert any("Launch is disabled: give the path of the base checkpoint" in unescaped(w.value) for w in app.warning)
    missing = tmp_path / "nope.ckpt"
    app.text_input(key="tf_ckpt").set_value(str(missing)).run()
    assert not app.exception
    assert next(b for b in app.button if b.label == "Launch").disabled
    assert any(f"Launch is disabled: no checkpoint at {missing}" in unescaped(w.value) for w in app.warning)
    app.switch_page("views/data.py").run()
    assert any(f"no checkpoint at {missing}" in unescaped(e.value) for e in app.error)
    assert not any("Ready to train" in s.value for s in app.success)


def test_a_new_condition_column_makes_its_control_value_a_guess_again(app, pbmc_with_treatment):
    path, _ = pbmc_with_treatment
    upload(app, path)
    next(b for b in app.sidebar.button if b.label == "Confirm the guessed fields").click().run()
    assert not select(app, "Control value").label.endswith("guessed")
    select(app, "Condition column").set_value("phase").run()
    assert select(app, "Control value").value == "(choose…)"  # no control-like value among G1, S, G2M
    select(app, "Condition column").set_value("treatment").run()
    assert select(app, "Control value").value == "ctrl" and select(app, "Control value").label.endswith("guessed")
