"""The validator on purpose-built bad files: each is a small copy of the demo with one problem, written to
.h5ad and read back through core.data.io (so the problem survives a real file round trip)."""

import numpy as np
import pandas as pd
import pytest

from core.data.io import read_h5ad
from core.data.mapping import ColumnMapping, candidates, control_candidates, guess_mapping
from core.data.summary import summary_table
from core.data.validate import validate
from core.errors import DataError

MAP = ColumnMapping("condition", "sham", "cell_types_simple_short", "mouse_id", "X_pca", "velocity_pca",
                    "velocity_confidence")


def _break(a, problem):
    if problem == "missing perturbation column":
        del a.obs["condition"]
    elif problem == "missing embedding":
        del a.obsm["X_pca"]
    elif problem == "missing batch column":
        del a.obs["mouse_id"]
    elif problem == "control value absent":
        a.obs["condition"] = a.obs["condition"].cat.rename_categories({"sham": "ctrl"})
    elif problem == "only control cells":
        a = a[a.obs["condition"] == "sham"].copy()
    elif problem == "nan in embedding":
        a.obsm["X_pca"][3, 1] = np.nan
    elif problem == "inf in embedding":
        a.obsm["X_pca"][5, 0] = np.inf
    elif problem == "duplicated cell names":
        names = a.obs_names.to_numpy().copy()
        names[1] = names[0]
        a.obs_names = names
    elif problem == "velocity of another shape":
        a.obsm["velocity_pca"] = a.obsm["velocity_pca"][:, :20]
    elif problem == "nan in velocity":
        a.obsm["velocity_pca"][0, 0] = np.nan
    elif problem == "negative confidence":
        a.obs["velocity_confidence"] = -0.5
    elif problem == "cell type without control cells":
        a = a[~((a.obs["cell_types_simple_short"] == "Fibroblast") & (a.obs["condition"] == "sham"))].copy()
    elif problem == "cell type without perturbed cells":
        a = a[~((a.obs["cell_types_simple_short"] == "Neutrophil") & (a.obs["condition"] == "burn"))].copy()
    elif problem == "unlabelled cells":
        a.obs["condition"] = a.obs["condition"].astype(object)
        a.obs.iloc[:7, a.obs.columns.get_loc("condition")] = None
    return a


PROBLEMS = {  # problem -> (error or warning, text it must contain)
    "missing perturbation column": ("error", "perturbation column 'condition' is not in obs"),
    "missing embedding": ("error", "embedding obsm['X_pca'] not found"),
    "missing batch column": ("error", "batch column 'mouse_id' is not in obs"),
    "control value absent": ("error", "control value 'sham' does not occur in 'condition'"),
    "only control cells": ("error", "has only the control value 'sham'"),
    "nan in embedding": ("error", "obsm['X_pca'] has NaN or inf in 1 cells"),
    "inf in embedding": ("error", "obsm['X_pca'] has NaN or inf in 1 cells"),
    "duplicated cell names": ("error", "cell names are duplicated"),
    "velocity of another shape": ("error", "velocities must be projected into the same latent space"),
    "nan in velocity": ("error", "obsm['velocity_pca'] has NaN or inf values in 1 cells"),
    "negative confidence": ("error", "obs['velocity_confidence'] must be finite and >= 0"),
    "cell type without control cells": ("warning", "cell type 'Fibroblast' has no control cells and is left out"),
    "cell type without perturbed cells": ("warning", "cell type 'Neutrophil' has no perturbed cells and is left out"),
    "unlabelled cells": ("warning", "7 cells have no perturbation in 'condition' and are left out"),
}


@pytest.fixture(scope="module")
def bad_files(small_demo, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad_files")
    paths = {}
    for problem in PROBLEMS:
        path = folder / (problem.replace(" ", "_") + ".h5ad")
        _break(small_demo[::2].copy(), problem).write_h5ad(path)  # 50 cells per type and condition
        paths[problem] = path
    return paths


@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_validator_catches_each_problem_in_a_bad_file(bad_files, problem):
    kind, text = PROBLEMS[problem]
    report = validate(read_h5ad(bad_files[problem]), MAP)
    found = report.errors if kind == "error" else report.warnings
    assert any(text in message for message in found), (report.errors, report.warnings)
    if kind == "error":
        with pytest.raises(DataError, match=r"\S"):
            report.raise_if_errors()
    else:
        assert report.ok, report.errors


def test_left_out_cell_types_are_not_usable(bad_files):
    report = validate(read_h5ad(bad_files["cell type without control cells"]), MAP)
    assert "Fibroblast" not in report.usable_cell_types and len(report.usable_cell_types) == 5
    unlabelled = validate(read_h5ad(bad_files["unlabelled cells"]), MAP)
    assert unlabelled.perturbations == ["burn"]  # the missing values are not a perturbation called "None"


def test_the_clean_file_passes_and_all_problems_are_reported_at_once(small_demo):
    assert validate(small_demo, MAP, set_size=32, expected_dim=50).ok
    a = small_demo.copy()
    a.obsm["velocity_pca"][0, 0] = np.nan
    a.obsm["X_pca"][0, 0] = np.inf
    del a.obs["mouse_id"]
    report = validate(a, MAP, expected_dim=64)
    assert len(report.errors) == 4, report.errors  # batch column, inf, dimension, velocity
    with pytest.raises(DataError) as err:
        report.raise_if_errors()
    assert str(err.value).startswith("(1) ") and "(4) " in str(err.value) and "\n" not in str(err.value)


def test_too_few_cells_for_the_set_size_leaves_cell_types_out(small_demo):
    # small_demo has 100 cells per cell type and condition
    report = validate(small_demo, MAP, set_size=150)
    assert not report.ok and "lower the set size" in report.errors[0]
    assert sum("fewer than the set size 150" in w for w in report.warnings) == 6
    obs = small_demo.obs
    macrophage_burn = np.flatnonzero(((obs["cell_types_simple_short"] == "Macrophage")
                                      & (obs["condition"] == "burn")).to_numpy())
    a = small_demo[np.setdiff1d(np.arange(small_demo.n_obs), macrophage_burn[40:])].copy()
    partial = validate(a, MAP, set_size=64)
    assert partial.ok and len(partial.usable_cell_types) == 5 and "Macrophage" not in partial.usable_cell_types
    assert "cell type 'Macrophage' has 40 cells on one side, fewer than the set size 64; it is left out " \
           "(lower the set size to keep it)" in partial.warnings


def test_embedding_dimension_must_match_the_base_model(small_demo):
    report = validate(small_demo, MAP, expected_dim=64)
    assert any("50 dimensions but the base model expects 64" in e for e in report.errors)


def test_batch_nested_in_condition_is_a_warning(small_demo):
    report = validate(small_demo, MAP, set_size=32)
    assert report.ok and any("nested in condition" in w for w in report.warnings)


def test_other_column_names_load_through_the_mapping(small_demo, tmp_path):
    a = small_demo.copy()
    a.obs = a.obs.rename(columns={"condition": "treatment", "cell_types_simple_short": "celltype",
                                  "mouse_id": "donor", "velocity_confidence": "vel_confidence"})
    a.obs["treatment"] = a.obs["treatment"].cat.rename_categories({"sham": "Control", "burn": "Burn_3d"})
    a.obsm["X_state"] = a.obsm.pop("X_pca")
    a.obsm["velocity_state"] = a.obsm.pop("velocity_pca")
    path = tmp_path / "renamed.h5ad"
    a.write_h5ad(path)
    loaded = read_h5ad(path)
    mapping = guess_mapping(loaded)
    assert mapping == ColumnMapping("treatment", "Control", "celltype", "donor", "X_state", "velocity_state",
                                    "vel_confidence")
    report = validate(loaded, mapping, set_size=32)
    assert report.ok and report.perturbations == ["Burn_3d"] and len(report.usable_cell_types) == 6
    table = summary_table(loaded, mapping)
    assert table["total"].sum() == loaded.n_obs and set(table.columns) == {"Burn_3d", "Control", "total"}
    expected = pd.crosstab([loaded.obs["celltype"].astype(str), loaded.obs["donor"].astype(str)],
                           loaded.obs["treatment"].astype(str))
    assert np.array_equal(table[["Burn_3d", "Control"]].to_numpy(), expected[["Burn_3d", "Control"]].to_numpy())


def test_guesses_on_the_demo_files(demo_with_velocity, atlas_adata):
    assert guess_mapping(demo_with_velocity) == MAP
    assert guess_mapping(atlas_adata) == ColumnMapping("perturbation", "control", "cell_types_simple_short",
                                                       "batch", "X_pca")
    opts = candidates(demo_with_velocity)
    assert opts["embed_key"][-1] == "X_umap" and opts["velocity_key"][-1] == "true_velocity_pca"
    assert control_candidates(["Burn", "DMSO_0.1%", "ctrl", "treated"]) == ["ctrl", "DMSO_0.1%"]


def test_unreadable_files_get_one_line_errors(tmp_path, small_demo):
    text = tmp_path / "notes.h5ad"
    text.write_text("cell,gene\n1,2\n")
    with pytest.raises(DataError, match="not an .h5ad"):
        read_h5ad(text)
    good = tmp_path / "good.h5ad"
    small_demo[:200].copy().write_h5ad(good)
    truncated = tmp_path / "truncated.h5ad"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    for source in (truncated, truncated.read_bytes()):
        with pytest.raises(DataError, match="truncated|could not be read") as err:
            read_h5ad(source)
        assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="not an .h5ad"):
        read_h5ad(b"PK\x03\x04 a zip file")
    assert read_h5ad(good.read_bytes()).n_obs == 200
    backed = read_h5ad(good, backed=True)
    assert backed.isbacked and backed.n_obs == 200
    backed.file.close()
    with pytest.raises(DataError, match="no file at"):
        read_h5ad(tmp_path / "missing.h5ad")
    with pytest.raises(DataError, match="is a folder"):
        read_h5ad(tmp_path)
