"""Inputs that used to train silently wrong now give a correct result (issue 12, points 3, 6, 7, 9, 10, 11):
the header check refuses what would not fit before reading, NaN conditions never become a label, the condition
is not guessed from a mouse id, float16 embeddings train as float32, cell types are counted after the split,
and non-finite weights never pass as a finished model."""

import h5py
import numpy as np
import pytest
import torch

from core.config import load_config
from core.data.h5_budget import check_h5ad, declared_bytes
from core.data.io import read_h5ad
from core.data.mapping import ColumnMapping, guess_mapping
from core.data.split_check import train_split_cell_types
from core.data.validate import validate
from core.errors import DataError
from core.training.data import SetDataModule, make_split
from core.training.finite_check import NonFiniteResultError, check_finite_result

MAPPING = ColumnMapping("condition", "sham", "cell_types_simple_short", "mouse_id", "X_pca")
TINY = ["model.kwargs.hidden_dim=32", "model.kwargs.n_layers=1", "model.kwargs.n_heads=2",
        "model.kwargs.cell_set_len=8", "data.kwargs.pert_col=condition", "data.kwargs.control_pert=sham",
        "data.kwargs.cell_type_key=cell_types_simple_short", "data.kwargs.embed_key=X_pca"]


def _with_declared(small_demo, path, shape, dtype="float32"):
    small_demo.write_h5ad(path)
    with h5py.File(path, "a") as f:
        f["obsm"].create_dataset("X_declared", shape=shape, dtype=dtype, chunks=(1, min(shape[1], 1024)))
    return path


def test_the_red_teams_2_gb_declaration_is_refused_before_reading(small_demo, tmp_path, monkeypatch):
    plain = tmp_path / "plain.h5ad"
    small_demo.write_h5ad(plain)
    path = _with_declared(small_demo, tmp_path / "bomb.h5ad", (1200, 450_000))
    assert path.stat().st_size - plain.stat().st_size < 1_000_000  # 2.2 GB declared, nothing stored
    monkeypatch.setenv("ST_MEMORY_BUDGET", "1G")
    for backed in (False, True):  # the app reads backed: obsm still loads into memory
        with pytest.raises(DataError, match=r"declares 2\.\d GB of arrays, more than the memory budget of 1\.0 GB"):
            read_h5ad(path, backed=backed)
    monkeypatch.setenv("ST_MEMORY_BUDGET", "4G")
    with h5py.File(path, "r") as f:
        total = declared_bytes(f)
    assert total >= 1200 * 450_000 * 4


def test_backed_reads_do_not_count_x_and_plain_reads_do(small_demo, tmp_path):
    path = tmp_path / "d.h5ad"
    small_demo.write_h5ad(path)
    with h5py.File(path, "r") as f:
        x_bytes = f["X"].size * f["X"].dtype.itemsize if isinstance(f["X"], h5py.Dataset) else sum(
            d.size * d.dtype.itemsize for d in f["X"].values())
        assert declared_bytes(f) - declared_bytes(f, backed=True) == x_bytes > 0


def test_an_upload_is_checked_from_its_bytes(small_demo, tmp_path, monkeypatch):
    path = _with_declared(small_demo, tmp_path / "bomb.h5ad", (1200, 10**8))
    with pytest.raises(DataError, match="the uploaded file declares"):
        read_h5ad(path.read_bytes())
    check_h5ad(tmp_path / "missing.h5ad", "x")  # not openable: left to the reader's own message


def test_cells_with_a_nan_condition_take_no_part_and_get_no_label(small_demo):
    a = small_demo.copy()
    condition = a.obs["condition"].astype(object).to_numpy()
    condition[:40] = np.nan
    a.obs["condition"] = condition
    cfg = load_config(None, TINY)
    report = validate(a, MAPPING, set_size=8)
    assert any("40 cells have no perturbation" in w for w in report.warnings)
    split = make_split(a.obs, MAPPING, "fraction", 0.15, 0.15, 0)
    data = SetDataModule(cfg, a, MAPPING, split, cell_types=report.usable_cell_types)
    assert data.pert_map == {"sham": 0, "burn": 1}
    assert set(data.table.split[:40]) == {"unused"}
    drawn = {g.label for g in data.train_sets.groups} | {g.label for g in data.val_sets.groups}
    assert drawn == {"burn"}


def test_an_integer_condition_is_taken_by_its_name_never_a_mouse_id(small_demo):
    a = small_demo.copy()
    a.obs["condition"] = (a.obs["condition"] == "burn").astype(np.int64).to_numpy()
    guess = guess_mapping(a)
    assert guess.pert_col == "condition" and guess.control_pert == ""
    a.obs = a.obs.rename(columns={"condition": "arm"})  # no name, no control-like value: nothing guessed
    assert guess_mapping(a).pert_col == ""
    assert guess_mapping(small_demo).pert_col == "condition"  # the demo is still guessed as before


def test_a_float16_embedding_trains_as_float32_with_a_warning(small_demo):
    a = small_demo.copy()
    a.obsm["X_pca"] = np.asarray(a.obsm["X_pca"], dtype=np.float16)
    report = validate(a, MAPPING, set_size=8)
    assert report.ok and any("is float16" in w for w in report.warnings)
    cfg = load_config(None, TINY)
    split = make_split(a.obs, MAPPING, "fraction", 0.15, 0.15, 0)
    data = SetDataModule(cfg, a, MAPPING, split)
    assert data.table.z.dtype == np.float32
    np.testing.assert_array_equal(data.table.z, np.asarray(a.obsm["X_pca"], dtype=np.float32))


def test_a_cell_type_with_set_size_cells_before_the_split_is_left_out_after_it(small_demo):
    # every (cell type, condition) group of small_demo has 100 cells; the training split keeps 70 of them
    split = make_split(small_demo.obs, MAPPING, "fraction", 0.15, 0.15, 0)
    types = sorted(small_demo.obs["cell_types_simple_short"].unique())
    assert validate(small_demo, MAPPING, set_size=100).usable_cell_types == types  # counted before the split
    keep, warnings = train_split_cell_types(small_demo.obs, MAPPING, split, types, 70)
    assert keep == types and not warnings
    with pytest.raises(DataError, match="after the train/val/test split"):
        train_split_cell_types(small_demo.obs, MAPPING, split, types, 71)
    a = small_demo[~((small_demo.obs["cell_types_simple_short"] == types[0])
                     & (np.arange(small_demo.n_obs) % 2 == 0))].copy()
    split = make_split(a.obs, MAPPING, "fraction", 0.15, 0.15, 0)
    keep, warnings = train_split_cell_types(a.obs, MAPPING, split, types, 60)
    assert keep == types[1:] and len(warnings) == 1 and f"'{types[0]}'" in warnings[0]


def test_non_finite_weights_or_validation_loss_are_never_a_finished_model():
    module = torch.nn.Linear(3, 2)
    check_finite_result(module, 0.5, step=1)
    with pytest.raises(NonFiniteResultError, match="validation loss after step 3 is nan"):
        check_finite_result(module, float("nan"), step=3)
    with torch.no_grad():
        module.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteResultError, match="1 weight tensors hold NaN or inf"):
        check_finite_result(module, 0.5, step=1)


def test_a_run_whose_last_update_leaves_nan_weights_ends_failed(small_demo, tmp_path, monkeypatch):
    import lightning as L

    from core.runs import read_status
    from core.training.run import train

    class PoisonAfterStep(L.Callback):
        """What learning_rate=inf did in one step: the update itself makes the weights NaN, after the last
        loss the per-step check could see."""

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))

    path = tmp_path / "d.h5ad"
    small_demo.write_h5ad(path)
    monkeypatch.setenv("ST_RUNS_DIR", str(tmp_path / "runs"))
    cfg = load_config(None, [*TINY, f"data.kwargs.path={path}", "training.max_steps=1", "training.accelerator=cpu",
                             "model.kwargs.lora.enable=false", "run.name=poisoned"])
    with pytest.raises(NonFiniteResultError, match="hold NaN or inf"):
        train(cfg, callbacks=[PoisonAfterStep()])
    status = read_status(tmp_path / "runs" / "poisoned")
    assert status["state"] == "failed" and "NaN or inf" in status["message"]


def test_a_learning_rate_that_would_overflow_adam_is_refused():
    with pytest.raises(Exception, match="learning_rate must be <= 10"):
        load_config(None, ["training.learning_rate=1e38"])
