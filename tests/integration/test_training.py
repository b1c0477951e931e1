"""The training engine end to end on the demo data with tiny models: pretrain on the atlas, LoRA fine-tune on
burn/sham (± mHC), the velocity term and its warm-up, cancel by STOP, reproducibility, splits and set sampling."""

import json
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
from support import TINY_MODEL

from core.config import load_config
from core.errors import ConfigError, DataError
from core.runs import list_mhc_snapshots, load_checkpoint, load_mhc_snapshot, read_metrics, read_status
from core.training.data import CellTable, SetDataModule, SetSampler, make_split, resolve_mapping
from core.training.run import train

TINY = [*TINY_MODEL, "training.learning_rate=0.003",
        "data.kwargs.split=fraction"]  # sizes below are of the held-out-cells design (default: held-out mice)
DEMO_KEYS = ["data.kwargs.pert_col=condition", "data.kwargs.control_pert=sham",
             "data.kwargs.cell_type_key=cell_types_simple_short", "data.kwargs.batch_col=mouse_id",
             "data.kwargs.embed_key=X_pca"]
VELOCITY = ["model.kwargs.use_velocity_alignment=true", "data.kwargs.velocity_key=velocity_pca",
            "data.kwargs.confidence_key=velocity_confidence", "model.kwargs.velocity_warmup_steps=4",
            "model.kwargs.velocity_lambda=0.5"]


def _train(root, name, *overrides, callbacks=None):
    return train(load_config(overrides=TINY + [f"run.root={root}", f"run.name={name}", *overrides]), callbacks)


def _rows(run_dir, split):
    frame = read_metrics(run_dir)
    return frame[frame["split"] == split].reset_index(drop=True)


@pytest.fixture(scope="module")
def small_path(small_demo, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "small_demo.h5ad"
    small_demo.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def runs(small_path, tmp_path_factory):
    """A tiny base pretrained on the demo atlas, then LoRA fine-tunes on burn/sham without and with mHC."""
    root = tmp_path_factory.mktemp("runs")
    base = _train(root, "base", "data.kwargs.dataset=atlas", "model.kwargs.lora.enable=false",
                  "training.max_steps=40")
    finetune = [f"data.kwargs.path={small_path}", *DEMO_KEYS, f"model.init_from={base / 'checkpoints/final.ckpt'}",
                "training.max_epochs=4", "training.mhc_snapshot_every=5"]
    lora = _train(root, "st-lora", *finetune)
    lora_mhc = _train(root, "st-lora-mhc", *finetune, "model.kwargs.use_mhc=true")
    return {"root": root, "base": base, "lora": lora, "lora_mhc": lora_mhc}


@pytest.fixture(scope="module")
def velocity_runs(small_path, tmp_path_factory):
    """Two identical from-scratch runs with the velocity term (same seed), and one with another seed."""
    root = tmp_path_factory.mktemp("vruns")
    args = [f"data.kwargs.path={small_path}", *DEMO_KEYS, *VELOCITY, "training.max_steps=8",
            "model.kwargs.lora.enable=false"]
    return (_train(root, "vel", *args), _train(root, "vel", *args),
            _train(root, "vel-seed", *args, "training.seed=1"))


def test_pretraining_then_lora_finetune_lowers_the_validation_distributional_loss(runs):
    base_val = _rows(runs["base"], "val")
    assert base_val["val_dist_loss"].iloc[-1] < base_val["val_dist_loss"].iloc[0]
    val = _rows(runs["lora"], "val")
    assert val["step"].iloc[0] == 0 and val["step"].iloc[-1] == _rows(runs["lora"], "train")["step"].max()
    start, end = val["val_dist_loss"].iloc[0], val["val_dist_loss"].iloc[-1]
    print(f"ST-LoRA validation energy distance: step 0 {start:.3f} -> step {val['step'].iloc[-1]} {end:.3f}")
    assert end < 0.8 * start


def test_mhc_finetune_starts_exactly_where_the_lora_finetune_starts(runs):
    """Function preservation through the whole pipeline: same base, same fixed validation sets, so the step-0
    validation loss with mHC wrapped around every block equals the one without."""
    plain, mhc = _rows(runs["lora"], "val"), _rows(runs["lora_mhc"], "val")
    assert plain["step"].iloc[0] == mhc["step"].iloc[0] == 0
    assert mhc["val_dist_loss"].iloc[0] == pytest.approx(plain["val_dist_loss"].iloc[0], rel=1e-5)
    assert mhc["val_dist_loss"].iloc[-1] < 0.8 * mhc["val_dist_loss"].iloc[0]


def test_run_folder_holds_what_the_contract_lists(runs, small_demo):
    run = runs["lora"]
    cfg = load_config(run / "config.yaml")
    assert cfg.data.kwargs.pert_col == "condition" and cfg.model.kwargs.hidden_dim == 32
    status = read_status(run)
    assert status["state"] == "completed" and status["progress"] == 1.0 and status["device"] == "cpu"
    train_rows = _rows(run, "train")
    assert list(train_rows["step"]) == list(range(1, len(train_rows) + 1))
    for key in ("epoch", "loss", "dist_loss", "lr", "grad_norm", "step_time", "cells"):
        assert train_rows[key].notna().all(), key
    assert (train_rows["lr"] == 0.003).all()
    per_epoch = train_rows.groupby("epoch")["cells"].sum()
    assert (per_epoch == 27 * 16).all()  # 420 perturbed training cells in sets of 16: 27 sets an epoch
    assert len(pd.read_csv(run / "metrics.csv")) == len(read_metrics(run))
    for name in ("best", "last", "final"):
        ckpt = load_checkpoint(run / "checkpoints" / f"{name}.ckpt")  # weights only: plain values
        assert ckpt["hyper_parameters"]["pert_map"] == {"sham": 0, "burn": 1}
    pert_map = json.loads((run / "pert_map.json").read_text())
    assert pert_map["map"] == {"sham": 0, "burn": 1} and pert_map["rebuilt"] == ["burn"]
    report = json.loads((run / "load_report.json").read_text())
    assert report["skipped"] == [] and report["new_perturbations"] == ["burn"]
    assert "backbone.layers.0.self_attn.q_proj.weight" in report["loaded"]
    assert any("lora_B" in k for k in report["initialised"])
    split = pd.read_csv(run / "split.csv")
    assert list(split["obs_name"]) == list(small_demo.obs_names)
    assert split["split"].value_counts().to_dict() == {"train": 840, "val": 180, "test": 180}
    env = json.loads((run / "env.json").read_text())
    assert env["device"] == "cpu" and env["torch"] and env["peft"]


def test_mhc_snapshots_every_k_steps_hold_doubly_stochastic_h_res(runs):
    snapshots = list_mhc_snapshots(runs["lora_mhc"])
    last = int(_rows(runs["lora_mhc"], "train")["step"].max())
    assert [s for s, _ in snapshots] == sorted({0, *range(5, last + 1, 5), last})
    snap = load_mhc_snapshot(snapshots[-1][1])
    assert snap["h_res"].shape == (2, 4, 4) and list(snap["layer_indices"]) == [0, 1]
    assert np.allclose(snap["h_res"].sum(-1), 1.0, atol=1e-4) and np.allclose(snap["h_res"].sum(-2), 1.0, atol=0.05)
    assert list_mhc_snapshots(runs["lora"]) == []


def test_velocity_term_is_weighted_by_its_warmup_and_absent_when_off(velocity_runs, runs):
    rows = _rows(velocity_runs[0], "train")
    assert list(rows["lambda_t"]) == pytest.approx([min(1.0, step / 4) for step in rows["step"]])
    expected = rows["dist_loss"] + rows["lambda_t"] * 0.5 * rows["vel_loss"]
    assert np.allclose(rows["loss"], expected, rtol=1e-5)
    # step 1 of a from-scratch run: the zero-initialised head predicts no shift, which has no direction, and the
    # default beta = 0 has no magnitude term, so the velocity loss is 0 there and only there
    assert rows["vel_loss"].iloc[0] == 0 and (rows["vel_loss"].iloc[1:] > 0).all()
    assert rows["cos_similarity"].between(-1, 1).all()
    assert {"vel_direction", "vel_magnitude", "magnitude_st", "magnitude_v"} <= set(rows.columns)
    val = _rows(velocity_runs[0], "val")
    assert val["val_vel_loss"].notna().all() and val["val_loss"].equals(val["val_dist_loss"])
    plain = _rows(runs["lora"], "train")
    assert not {"vel_loss", "lambda_t", "cos_similarity"} & set(plain.columns)
    assert np.allclose(plain["loss"], plain["dist_loss"])


def test_same_seed_gives_the_same_run_and_another_seed_does_not(velocity_runs):
    first, again, other = (_rows(run, "train") for run in velocity_runs)
    assert np.allclose(first["loss"], again["loss"], rtol=1e-6, atol=1e-7)
    assert np.allclose(_rows(velocity_runs[0], "val")["val_loss"], _rows(velocity_runs[1], "val")["val_loss"])
    assert not np.allclose(first["loss"], other["loss"])


class _StopAt(L.Callback):
    """Writes the STOP file (as core.runs.cancel_run does) right after step ``at``."""

    def __init__(self, at: int):
        self.at = at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at:
            Path(trainer.default_root_dir, "STOP").touch()


def test_stop_file_cancels_within_one_step(small_path, tmp_path):
    run = _train(tmp_path, "cancel", f"data.kwargs.path={small_path}", *DEMO_KEYS, "training.max_epochs=20",
                 callbacks=[_StopAt(3)])
    steps = _rows(run, "train")["step"]
    assert steps.max() in (3, 4)
    status = read_status(run)
    assert status["state"] == "cancelled" and status["step"] == steps.max()
    assert (run / "checkpoints" / "final.ckpt").exists() and (run / "checkpoints" / "last.ckpt").exists()


def test_split_by_batch_holds_out_whole_mice(small_demo):
    keys = resolve_mapping(load_config(overrides=DEMO_KEYS + ["data.kwargs.path=x.h5ad"]), small_demo)
    split = make_split(small_demo.obs, keys, "batch", 0.15, 0.15, seed=0)
    frame = pd.DataFrame({"mouse": small_demo.obs["mouse_id"].astype(str).to_numpy(), "split": split,
                          "condition": small_demo.obs["condition"].astype(str).to_numpy()})
    assert (frame.groupby("mouse")["split"].nunique() == 1).all()
    held = frame.drop_duplicates("mouse").groupby(["split", "condition"]).size()
    assert held[("val", "sham")] == held[("val", "burn")] == held[("test", "sham")] == held[("test", "burn")] == 1


def test_split_by_fraction_holds_out_that_share_of_every_cell_type_and_condition(small_demo):
    keys = resolve_mapping(load_config(overrides=DEMO_KEYS + ["data.kwargs.path=x.h5ad"]), small_demo)
    split = make_split(small_demo.obs, keys, "fraction", 0.2, 0.1, seed=3)
    counts = pd.crosstab([small_demo.obs["cell_types_simple_short"], small_demo.obs["condition"]], split)
    assert (counts["val"] == 20).all() and (counts["test"] == 10).all() and (counts["train"] == 70).all()


def _table(small_demo, split):
    keys = resolve_mapping(load_config(overrides=DEMO_KEYS + ["data.kwargs.path=x.h5ad"]), small_demo)
    table = CellTable.from_adata(small_demo, keys, split)
    table.z = np.arange(small_demo.n_obs, dtype=np.float32)[:, None].repeat(2, 1)  # z says which cell it is
    return table


def test_set_sampler_pairs_controls_and_perturbed_cells_of_one_cell_type_and_split(small_demo):
    split = make_split(small_demo.obs, resolve_mapping(load_config(overrides=DEMO_KEYS + ["data.kwargs.path=x"]),
                                                       small_demo), "fraction", 0.15, 0.15, seed=0)
    table = _table(small_demo, split)
    sampler = SetSampler(table, "train", 16, {"sham": 0, "burn": 1}, seed=0)
    for i in range(len(sampler)):
        item = sampler[i]
        control = item["z_control"][:, 0].numpy().astype(int)
        perturbed = item["z_perturbed"][:, 0].numpy().astype(int)
        assert (table.pert[control] == "sham").all() and (table.pert[perturbed] == "burn").all()
        assert len(set(table.cell_type[control]) | set(table.cell_type[perturbed])) == 1
        assert (table.split[control] == "train").all() and (table.split[perturbed] == "train").all()
        assert len(set(control)) == 16  # enough cells: drawn without replacement
    assert sampler[5]["z_control"].equal(sampler[5]["z_control"])  # same (seed, epoch, index): same set
    sampler.set_epoch(1)
    assert not sampler[5]["z_control"].equal(SetSampler(table, "train", 16, {"sham": 0, "burn": 1}, 0)[5]["z_control"])


def test_matching_by_cell_type_and_batch_falls_back_and_says_so_when_batch_is_nested(small_demo):
    cfg = load_config(overrides=TINY + DEMO_KEYS + ["data.kwargs.path=x.h5ad", "data.kwargs.match_by=cell_type_batch",
                                                    "model.kwargs.use_batch=true"])
    keys = resolve_mapping(cfg, small_demo)
    split = make_split(small_demo.obs, keys, "batch", 0.15, 0.15, seed=0)
    data = SetDataModule(cfg, small_demo, keys, split)
    notes = " ".join(data.matching_notes())
    assert "0 of 12 training groups have controls in their own batch; 12 fall back to cell type" in notes
    assert sorted(data.batch_map) == sorted(set(small_demo.obs["mouse_id"].astype(str)[split == "train"]))
    val_rows = np.flatnonzero(split == "val")
    assert (data.val_sets.batch_idx[val_rows] == len(data.batch_map)).all()  # held-out mice: the unknown row


def test_velocity_alignment_without_velocities_is_a_data_error(small_demo):
    bare = small_demo.copy()
    del bare.obsm["velocity_pca"]
    cfg = load_config(overrides=DEMO_KEYS + VELOCITY + ["data.kwargs.path=x.h5ad"])
    with pytest.raises(DataError, match="python -m core velocity"):
        resolve_mapping(cfg, bare)


def test_velocity_warmup_as_a_fraction_of_the_runs_steps_replaces_the_step_count(small_path, tmp_path):
    # 8 steps x 0.25 = a 2-step warm-up, where velocity_warmup_steps=4 would have given 4
    run = _train(tmp_path, "fraction", f"data.kwargs.path={small_path}", *DEMO_KEYS, *VELOCITY,
                 "training.max_steps=8", "model.kwargs.lora.enable=false", "model.kwargs.velocity_warmup_fraction=0.25")
    rows = _rows(run, "train")
    assert list(rows["step"]) == list(range(1, 9))
    assert list(rows["lambda_t"]) == pytest.approx([0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])


def test_velocity_defaults_are_direction_only_and_bad_warmup_fractions_are_refused():
    m = load_config().model.kwargs
    assert m.velocity_beta == 0.0 and m.velocity_warmup_fraction is None and m.velocity_warmup_steps == 50
    for bad in (0, 1.5, -0.1):
        with pytest.raises(ConfigError, match="velocity_warmup_fraction"):
            load_config(overrides=[f"model.kwargs.velocity_warmup_fraction={bad}"])
