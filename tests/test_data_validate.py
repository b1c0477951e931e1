import numpy as np
import pytest

from core.data.io import read_h5ad
from core.data.mapping import ColumnMapping, guess_mapping
from core.data.summary import summary_table
from core.data.validate import validate
from core.errors import DataError

MAP = ColumnMapping("condition", "sham", "cell_types_simple_short", "mouse_id", "X_pca", "velocity_pca",
                    "velocity_confidence")


def broken(small_demo, how):
    a = small_demo.copy()
    if how == "control absent":
        a.obs["condition"] = a.obs["condition"].cat.rename_categories({"sham": "ctrl"})
    elif how == "one condition":
        a = a[a.obs["condition"] == "sham"].copy()
    elif how == "nan embedding":
        a.obsm["X_pca"][3, 1] = np.nan
    elif how == "inf embedding":
        a.obsm["X_pca"][5, 0] = np.inf
    elif how == "duplicated names":
        names = a.obs_names.to_numpy().copy()
        names[1] = names[0]
        a.obs_names = names
    elif how == "velocity shape":
        a.obsm["velocity_pca"] = a.obsm["velocity_pca"][:, :20]
    elif how == "nan velocity":
        a.obsm["velocity_pca"][0, 0] = np.nan
    elif how == "negative confidence":
        a.obs["velocity_confidence"] = -0.5
    elif how == "missing column":
        del a.obs["mouse_id"]
    return a


@pytest.mark.parametrize("how, message", [
    ("control absent", "control value 'sham' does not occur"),
    ("one condition", "only the control value"),
    ("nan embedding", "NaN or inf in 1 cells"),
    ("inf embedding", "NaN or inf in 1 cells"),
    ("duplicated names", "duplicated"),
    ("velocity shape", "same latent space"),
    ("nan velocity", "NaN or inf"),
    ("negative confidence", ">= 0"),
    ("missing column", "batch column 'mouse_id' is not in obs"),
])
def test_validator_catches_each_problem(small_demo, how, message):
    report = validate(broken(small_demo, how), MAP)
    assert not report.ok
    assert any(message in e for e in report.errors), report.errors
    with pytest.raises(DataError):
        report.raise_if_errors()


def test_validator_reports_all_problems_at_once_and_warns_on_small_cell_types(small_demo):
    a = broken(small_demo, "nan velocity")
    a.obsm["X_pca"][0, 0] = np.inf
    report = validate(a, MAP)
    assert len(report.errors) == 2
    ok = validate(small_demo, MAP, set_size=150)  # 100 cells per side: every type too small
    assert not ok.ok and "lower the set size" in ok.errors[0]
    assert sum("fewer than the set size 150" in w for w in ok.warnings) == 6
    assert any("nested in condition" in w for w in validate(small_demo, MAP, set_size=32).warnings)


def test_embedding_dimension_must_match_the_base_model(small_demo):
    report = validate(small_demo, MAP, expected_dim=64)
    assert any("50 dimensions but the base model expects 64" in e for e in report.errors)


def test_cell_type_with_no_perturbed_cells_is_left_out_with_a_warning(small_demo):
    a = small_demo[~((small_demo.obs["cell_types_simple_short"] == "Neutrophil")
                     & (small_demo.obs["condition"] == "burn"))].copy()
    report = validate(a, MAP, set_size=16)
    assert report.ok and "Neutrophil" not in report.usable_cell_types
    assert any("'Neutrophil' has no perturbed cells" in w for w in report.warnings)


def test_other_column_names_load_through_the_mapping(small_demo, tmp_path):
    a = small_demo.copy()
    a.obs = a.obs.rename(columns={"condition": "treatment", "cell_types_simple_short": "celltype",
                                  "mouse_id": "donor"})
    a.obs["treatment"] = a.obs["treatment"].cat.rename_categories({"sham": "Control", "burn": "Burn_3d"})
    a.obsm["X_state"] = a.obsm.pop("X_pca")
    path = tmp_path / "renamed.h5ad"
    a.write_h5ad(path)
    loaded = read_h5ad(path)
    mapping = guess_mapping(loaded)
    assert (mapping.pert_col, mapping.control_pert, mapping.cell_type_key, mapping.batch_col, mapping.embed_key) == (
        "treatment", "Control", "celltype", "donor", "X_state")
    mapping.velocity_key, mapping.confidence_key = None, None
    report = validate(loaded, mapping, set_size=32)
    assert report.ok and report.perturbations == ["Burn_3d"]
    table = summary_table(loaded, mapping)
    assert table["total"].sum() == loaded.n_obs and set(table.columns) == {"Burn_3d", "Control", "total"}


def test_unreadable_files_get_one_line_errors(tmp_path, small_demo):
    text = tmp_path / "notes.h5ad"
    text.write_text("cell,gene\n1,2\n")
    with pytest.raises(DataError, match="not an .h5ad"):
        read_h5ad(text)
    good = tmp_path / "good.h5ad"
    small_demo.write_h5ad(good)
    truncated = tmp_path / "truncated.h5ad"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    with pytest.raises(DataError, match="truncated|could not be read"):
        read_h5ad(truncated)
    with pytest.raises(DataError, match="not an .h5ad"):
        read_h5ad(b"PK\x03\x04 a zip file")
    assert read_h5ad(good.read_bytes()).n_obs == small_demo.n_obs
    with pytest.raises(DataError, match="no file at"):
        read_h5ad(tmp_path / "missing.h5ad")
