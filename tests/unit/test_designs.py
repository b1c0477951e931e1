"""The three designs as splits: held-out cells, held-out mice (the default for burn/sham with >= 2 mice per
condition) and a held-out cell type, on small tables where the right split is known by hand; and a tiny
held-out-cell-type run evaluated end to end, whose per-cell-type baselines do not exist."""

import json

import numpy as np
import pandas as pd
import pytest

from core.config import load_config
from core.data.mapping import ColumnMapping
from core.errors import ConfigError, DataError
from core.training.data import make_split, resolve_split

MAPPING = ColumnMapping("condition", "sham", "cell_type", "mouse", "X_pca")


def burn_sham_obs(mice_per_condition=2, cells=20, kinds=("A", "B")):
    rows = []
    for condition in ("sham", "burn"):
        for mouse in range(mice_per_condition):
            for kind in kinds:
                rows += [{"condition": condition, "cell_type": kind, "mouse": f"{condition}_{mouse}"}] * cells
    return pd.DataFrame(rows)


def test_auto_holds_out_mice_for_burn_sham_with_two_mice_per_condition():
    assert resolve_split(burn_sham_obs(2), MAPPING, "auto") == "batch"
    assert resolve_split(burn_sham_obs(4), MAPPING, "auto") == "batch"
    assert resolve_split(burn_sham_obs(1), MAPPING, "auto") == "fraction"  # one mouse: nothing to hold out
    no_batch = ColumnMapping("condition", "sham", "cell_type", None, "X_pca")
    assert resolve_split(burn_sham_obs(2), no_batch, "auto") == "fraction"
    three = burn_sham_obs(2)
    three.loc[:9, "condition"] = "scald"  # a third condition: an atlas, not a burn/sham design
    assert resolve_split(three, MAPPING, "auto") == "fraction"
    assert resolve_split(burn_sham_obs(2), MAPPING, "fraction") == "fraction"


def test_two_mice_per_condition_test_one_mouse_and_validate_on_part_of_the_other():
    obs = burn_sham_obs(2, cells=20)
    split = make_split(obs, MAPPING, "batch", val_fraction=0.25, test_fraction=0.15, seed=0)
    for condition in ("sham", "burn"):
        in_condition = (obs["condition"] == condition).to_numpy()
        test_mice = set(obs.loc[in_condition & (split == "test"), "mouse"])
        train_mice = set(obs.loc[in_condition & (split == "train"), "mouse"])
        assert len(test_mice) == 1 and len(train_mice) == 1 and not test_mice & train_mice
        assert set(obs.loc[in_condition & (split == "val"), "mouse"]) == train_mice
        for kind in ("A", "B"):  # 25 % of each cell type of the training mouse: 5 of 20
            assert ((split == "val") & in_condition & (obs["cell_type"] == kind).to_numpy()).sum() == 5
        assert (in_condition & (split == "test")).sum() == 40  # the whole mouse, both cell types


def test_three_mice_per_condition_keep_one_mouse_each_for_validation_and_test():
    obs = burn_sham_obs(3)
    split = make_split(obs, MAPPING, "auto", 0.15, 0.15, seed=1)
    for condition in ("sham", "burn"):
        in_condition = (obs["condition"] == condition).to_numpy()
        for part in ("train", "val", "test"):
            assert obs.loc[in_condition & (split == part), "mouse"].nunique() == 1


def test_held_out_cell_type_puts_all_of_it_in_test_and_nothing_else():
    obs = burn_sham_obs(2, cells=20, kinds=("A", "B", "C"))
    split = make_split(obs, MAPPING, "cell_type", val_fraction=0.2, test_fraction=0.15, seed=0, holdout="B")
    is_b = (obs["cell_type"] == "B").to_numpy()
    assert (split[is_b] == "test").all() and not (split[~is_b] == "test").any()
    # validation: 20 % of each other (cell type, condition) group of 40 cells
    for kind in ("A", "C"):
        for condition in ("sham", "burn"):
            group = ((obs["cell_type"] == kind) & (obs["condition"] == condition)).to_numpy()
            assert (split[group] == "val").sum() == 8


def test_held_out_cell_type_needs_a_known_cell_type():
    obs = burn_sham_obs(2)
    with pytest.raises(DataError, match="choose one of A, B"):
        make_split(obs, MAPPING, "cell_type", 0.15, 0.15, seed=0, holdout="Z")
    with pytest.raises(ConfigError, match="needs data.kwargs.holdout"):
        load_config(overrides=["data.kwargs.split=cell_type"])
    with pytest.raises(ConfigError, match="only used with data.kwargs.split=cell_type"):
        load_config(overrides=["data.kwargs.holdout=A", "data.kwargs.split=fraction"])
    assert load_config().data.kwargs.split == "auto"


def test_fraction_split_is_refused_no_longer_but_warned_as_interpolation():
    from core.data.designs import describe_design

    assert describe_design({"split": "fraction"})["warnings"][0].startswith("held-out cells come from the same mice")
    held = describe_design({"split": "cell_type", "holdout": "Fibroblast"})
    assert held["warnings"] == [] and held["description"].endswith(": Fibroblast")


@pytest.fixture(scope="module")
def held_out_type_run(tmp_path_factory, small_demo):
    from core.training.run import train

    root = tmp_path_factory.mktemp("design_runs")
    data_path = root / "small_demo.h5ad"
    small_demo.write_h5ad(data_path)
    cfg = load_config(overrides=[
        f"data.kwargs.path={data_path}", "data.kwargs.embed_key=X_pca", "data.kwargs.pert_col=condition",
        "data.kwargs.control_pert=sham", "data.kwargs.cell_type_key=cell_types_simple_short",
        "data.kwargs.batch_col=mouse_id", "data.kwargs.split=cell_type", "data.kwargs.holdout=Fibroblast",
        "training.max_steps=2", "training.batch_size=2", "training.accelerator=cpu", "model.kwargs.hidden_dim=16",
        "model.kwargs.n_layers=1", "model.kwargs.n_heads=2", "model.kwargs.cell_set_len=8", f"run.root={root}",
    ])
    return train(cfg)


def test_held_out_cell_type_run_is_scored_on_that_type_without_per_type_baselines(held_out_type_run, capsys):
    from core.__main__ import main

    run_dir = held_out_type_run
    assert main(["evaluate", str(run_dir), "--no-predictions"]) == 0
    summary = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert list(summary["per_cell_type"]) == ["Fibroblast"]
    assert summary["design"]["split"] == "cell_type" and summary["design"]["holdout"] == "Fibroblast"
    for method in ("train_mean_shift", "gaussian_ot", "train_burn_resample"):
        assert summary["overall"][method]["energy_distance"] is None
        assert "Fibroblast" in summary["unavailable"][method]["Fibroblast"]
    assert summary["overall"]["global_mean_shift"]["energy_distance"] > 0
    assert summary["best"]["energy_distance"] in ("model", "no_change", "global_mean_shift")
    split = pd.read_csv(run_dir / "split.csv")
    printed = capsys.readouterr().out
    assert "type shift does not exist for Fibroblast" in printed
    assert "design: held-out cell type" in printed
    assert np.isin(split["split"], ["train", "val", "test"]).all()
