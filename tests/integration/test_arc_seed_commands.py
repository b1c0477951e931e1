"""The seed's two Arc State commands run here as written (tests/fixtures/arc/burn_sham_small.h5ad has their
column names); Arc's top-level output_dir= and name= make the run folder output_dir/name."""

from pathlib import Path

import anndata as ad
import pytest

from core.__main__ import main
from core.config import load_config
from core.errors import ConfigError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "arc"
SEED_TRAIN = ("data.kwargs.embed_key=X_state_baseline data.kwargs.pert_col=condition data.kwargs.control_pert=sham "
              "data.kwargs.cell_type_key=cell_types_simple_short data.kwargs.batch_col=mouse_id "
              "model.kwargs.lora.enable=true model.kwargs.lora.r=16 model.kwargs.lora.alpha=32 "
              "model.kwargs.use_mhc=true model.kwargs.mhc.sinkhorn_iters=10 training.max_epochs=5 "
              "training.learning_rate=5e-5 output_dir=/some/dir name=st_lora_mhc_burn_sham").split()


def test_every_key_of_the_seed_train_command_lands_where_it_says():
    cfg = load_config(overrides=SEED_TRAIN)
    d, m, t = cfg.data.kwargs, cfg.model.kwargs, cfg.training
    assert (d.embed_key, d.pert_col, d.control_pert, d.cell_type_key, d.batch_col) == (
        "X_state_baseline", "condition", "sham", "cell_types_simple_short", "mouse_id")
    assert (m.lora.enable, m.lora.r, m.lora.alpha, m.use_mhc, m.mhc.sinkhorn_iters) == (True, 16, 32, True, 10)
    assert (t.max_epochs, t.learning_rate) == (5, 5e-5)
    assert (cfg.run.root, cfg.run.name) == ("/some/dir", "st_lora_mhc_burn_sham")


def test_arc_key_names_for_the_same_settings_still_work():
    cfg = load_config(overrides=["training.lr=5e-5", "training.max_steps=12", "model.kwargs.init_from=demo"])
    assert (cfg.training.learning_rate, cfg.training.max_steps, cfg.model.init_from) == (5e-5, 12, "demo")


def test_seed_train_command_runs_on_a_small_file_into_output_dir_slash_name(tmp_path, capsys):
    # the seed's command as written, plus the file, held-out cells and sets of 8: the 144-cell fixture has two mice per
    # condition, and holding one out (the default for burn/sham data) leaves too few cells per type for a set
    rc = main(["train", *SEED_TRAIN, f"data.kwargs.path={FIXTURES / 'burn_sham_small.h5ad'}",
               f"output_dir={tmp_path}", "training.accelerator=cpu", "data.kwargs.split=fraction",
               "model.kwargs.cell_set_len=8"])
    assert rc == 0
    run = tmp_path / "st_lora_mhc_burn_sham"
    assert (run / "checkpoints" / "final.ckpt").is_file() and (run / "config.yaml").is_file()
    assert f'"run_dir": "{run}"' in capsys.readouterr().out


@pytest.mark.parametrize("name", ["../escape", "/abs/path", "a/b"])
def test_a_name_with_a_path_is_refused_like_run_name(tmp_path, capsys, name):
    rc = main(["train", f"output_dir={tmp_path}", f"name={name}", "training.max_epochs=1"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: run name") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_name_must_be_text():
    with pytest.raises(ConfigError, match="run.name|name must be a text value"):
        load_config(overrides=["name={a: 1}"])


def test_seed_infer_command_runs_on_the_committed_arc_folder(tmp_path, capsys):
    out = tmp_path / "preds.h5ad"
    rc = main(["infer", "--model-dir", str(FIXTURES / "emb_llama"), "--checkpoint",
               str(FIXTURES / "emb_llama" / "checkpoints" / "final.ckpt"), "--adata",
               str(FIXTURES / "burn_sham_small.h5ad"), "--embed-key", "X_state_baseline", "--pert-col", "condition",
               "--control-pert", "sham", "--celltype-col", "cell_types_simple_short", "--batch-col", "mouse_id",
               "--output", str(out)])
    assert rc == 0
    preds = ad.read_h5ad(out)
    # the fixture model knows drugX and drugY, not burn: it predicts those from every sham cell
    assert sorted(set(preds.obs["condition"])) == ["drugX", "drugY"] and preds.n_obs == 2 * 72
    assert "batches ['m1', 'm2'] were not seen in training" in capsys.readouterr().out
