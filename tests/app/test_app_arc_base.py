"""An Arc State folder as the Train page's base model: the page shows what the folder expects and its load
report, and the Data page checks the data against the folder (core/arc/check.py) before anything launches.
The folder is the committed one that arc-state 0.11.1 trained (tests/fixtures/arc/make_fixtures.py)."""

from pathlib import Path

import pytest
from support import started_app, unescaped

from app.readiness import BASES

APP = "../../app/main.py"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "arc"


@pytest.fixture
def app(tmp_path, monkeypatch):
    at = started_app(monkeypatch, tmp_path / "runs")
    at.sidebar.radio(key="data_source").set_value("Upload a .h5ad file").run()
    path = FIXTURES / "burn_sham_small.h5ad"  # 144 burn/sham cells, obsm X_state_baseline (16-d) and X_hvg (24-d)
    at.sidebar.file_uploader[0].upload(path.name, path.read_bytes()).run()
    for label, value in (("Condition column", "condition"), ("Control value", "sham"),
                         ("Cell-type column", "cell_types_simple_short"), ("Batch column", "mouse_id"),
                         ("Embedding (obsm)", "X_state_baseline")):
        next(s for s in at.sidebar.selectbox if s.label.startswith(label)).set_value(value).run()
    confirm = [b for b in at.sidebar.button if b.label == "Confirm the guessed fields"]
    if confirm:
        confirm[0].click().run()
    assert not at.exception
    at.switch_page("views/train.py").run()
    at.number_input(key="tf_set").set_value(8).run()
    at.radio(key="tf_base").set_value(BASES[1]).run()
    at.text_input(key="tf_ckpt").set_value(str(FIXTURES / "emb_llama")).run()
    assert not at.exception
    return at


def test_train_page_shows_what_the_arc_folder_expects_and_its_load_report(app):
    expects = next(t.value for t in app.dataframe if "expects" in t.value.columns)["expects"]
    assert expects["embedding"] == "obsm['X_emb'], 16-d"
    assert expects["output space"] == "embedding (16-d)"
    assert expects["perturbations it knows"] == "control, drugX, drugY" and expects["control"] == "control"
    assert expects["batches it knows"] == "b0, b1, b2"
    report = "\n".join(t.value for t in app.text)
    assert "32 tensors loaded, 1 dropped (transformer_backbone.embed_tokens.weight)" in report
    assert "loaded  transformer_backbone.layers.0.self_attn.q_proj.weight" in report  # every tensor is listed
    assert not next(b for b in app.button if b.label == "Launch").disabled


def test_data_page_checks_the_data_against_the_arc_folder(app):
    app.switch_page("views/data.py").run()
    assert not app.exception
    shown = [unescaped(e.value) for kind in ("success", "info", "error") for e in getattr(app, kind)]
    assert "obsm['X_state_baseline'] has 16 dimensions; the model takes 16" in shown
    assert any("control 'sham' (72 cells) takes Arc's control 'control'" in s for s in shown)
    assert any("perturbations new to the model: ['burn']" in s for s in shown)
    assert any("batches new to the model in 'mouse_id': ['m1', 'm2', 'm3', 'm4']" in s for s in shown)
    assert any("Arc State folder" in c.value for c in app.caption)


def test_an_embedding_of_another_width_disables_launch_with_the_folders_reason(app):
    next(s for s in app.sidebar.selectbox if s.label.startswith("Embedding (obsm)")).set_value("X_hvg").run()
    assert next(b for b in app.button if b.label == "Launch").disabled
    app.switch_page("views/data.py").run()
    errors = [unescaped(e.value) for e in app.error]
    assert "obsm['X_hvg'] has 24 dimensions; the model takes 16" in errors
    assert not any("Ready to train" in s.value for s in app.success)


def test_a_broken_arc_folder_is_one_line_and_launch_stays_disabled(app, tmp_path):
    import shutil

    broken = tmp_path / "arc_broken"
    shutil.copytree(FIXTURES / "emb_llama", broken)
    (broken / "pert_onehot_map.pt").unlink()
    app.text_input(key="tf_ckpt").set_value(str(broken)).run()
    assert not app.exception
    assert next(b for b in app.button if b.label == "Launch").disabled
    reasons = [unescaped(w.value) for w in app.warning if "Launch is disabled" in w.value]
    assert len(reasons) == 1 and reasons[0].endswith("arc_broken has no pert_onehot_map.pt; an Arc State run "
                                                     "folder holds config.yaml, var_dims.pkl, pert_onehot_map.pt "
                                                     "and checkpoints/.")
