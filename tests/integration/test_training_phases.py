"""The trainer says which part of data preparation is running (it used to say only "preparing data" for
16 s), in the order the parts run."""

from core.config import load_config
from core.training.prepare import prepare_data


def test_data_preparation_reports_each_phase_as_it_starts(tmp_path, demo_adata):
    seen = []
    cfg = load_config(overrides=["model.init_from=demo"])
    data, mapping, notes = prepare_data(cfg, tmp_path, phase=seen.append)
    assert seen == ["reading the data set", f"checking {demo_adata.n_obs:,} cells against the mapping",
                    "splitting the cells and building the sets"]
    assert mapping.pert_col == "condition" and data.embedding["dim"] == demo_adata.obsm["X_pca"].shape[1]
    velocity = load_config(overrides=["model.kwargs.use_velocity_alignment=true"])
    seen.clear()
    prepare_data(velocity, tmp_path, phase=seen.append)
    assert seen[0] == "reading the data set and computing its velocity (cached after the first run)"
