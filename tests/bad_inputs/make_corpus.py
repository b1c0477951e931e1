"""The corpus of purpose-built bad inputs: each case is a file (or none) plus the command line that
feeds it to ``python -m core``, and a phrase the one-line error must contain.

Files are generated from the small demo into a folder (a test's tmp dir), so nothing large is committed:
``python tests/bad_inputs/make_corpus.py OUT_DIR`` writes them by hand and prints the commands.

Every train case uses a tiny model and one epoch, so that a case that is wrongly accepted ends in seconds
(and then fails its test) instead of training for minutes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# The demo's layout, passed explicitly so that no case depends on column guessing.
MAPPING = ["data.kwargs.pert_col=condition", "data.kwargs.control_pert=sham",
           "data.kwargs.cell_type_key=cell_types_simple_short", "data.kwargs.batch_col=mouse_id",
           "data.kwargs.embed_key=X_pca"]
VELOCITY = ["model.kwargs.use_velocity_alignment=true", "data.kwargs.velocity_key=velocity_pca",
            "data.kwargs.confidence_key=velocity_confidence"]
TINY = ["model.kwargs.hidden_dim=32", "model.kwargs.n_layers=2", "model.kwargs.n_heads=2",
        "model.kwargs.cell_set_len=16", "training.max_epochs=1", "training.accelerator=cpu"]


@dataclass
class Case:
    name: str
    argv: list[str]          # after ``python -m core``; {data} / {ckpt} / {out} are filled in by ``command``
    expect: str              # a phrase the error line must contain (case-insensitive)
    make: object = None      # make(small_demo, folder) -> None: writes the case's files
    files: list[str] = field(default_factory=list)

    def command(self, folder: Path) -> list[str]:
        return [a.format(data=folder / f"{self.name}.h5ad", ckpt=folder / f"{self.name}.ckpt",
                         out=folder / f"{self.name}-out.h5ad") for a in self.argv]


def _train(*extra: str, data: bool = True) -> list[str]:
    return ["train", *(["data.kwargs.path={data}"] if data else []), *MAPPING, *TINY, *extra]


def _write(adata, folder: Path, name: str) -> None:
    adata.write_h5ad(folder / f"{name}.h5ad")


def _edited(edit):
    def make(small_demo, folder: Path, name: str) -> None:
        a = small_demo.copy()
        a = edit(a) or a
        _write(a, folder, name)
    return make


def _not_hdf5(small_demo, folder: Path, name: str) -> None:
    (folder / f"{name}.h5ad").write_text("cell,condition\nAAAC,burn\nAAAG,sham\n")


def _truncated(small_demo, folder: Path, name: str) -> None:
    whole = folder / f"{name}-whole.h5ad"
    small_demo.write_h5ad(whole)
    data = whole.read_bytes()
    (folder / f"{name}.h5ad").write_bytes(data[: len(data) // 3])  # keeps the HDF5 signature
    whole.unlink()


def _rename_control(a):
    a.obs["condition"] = a.obs["condition"].cat.rename_categories({"sham": "ctrl"})


def _one_condition(a):
    return a[a.obs["condition"] == "sham"].copy()


def _set(key, row, col, value):
    def edit(a):
        arr = np.array(a.obsm[key], dtype=np.float32, copy=True)
        arr[row, col] = value
        a.obsm[key] = arr
    return edit


def _velocity_other_shape(a):
    a.obsm["velocity_pca"] = np.ascontiguousarray(a.obsm["velocity_pca"][:, :7])


def _negative_confidence(a):
    a.obs["velocity_confidence"] = -0.5


def _drop_column(a):
    del a.obs["mouse_id"]


def _no_obs_columns(a):
    a.obs = a.obs[[]]  # e.g. an export that kept only the matrix: nothing to choose the condition from


def _not_a_checkpoint(small_demo, folder: Path, name: str) -> None:
    (folder / f"{name}.ckpt").write_bytes(b"this is a text file renamed to .ckpt\n" * 20)


def _other_embedding_dim(small_demo, folder: Path, name: str) -> None:
    """A genuine base checkpoint of this project's model, trained on 7-d embeddings (the demo has 50)."""
    import torch

    from core.config import load_config
    from core.model.build import plain_model

    # The run's data keys are the demo's (as a run records them), so only the dimension is wrong.
    cfg = load_config(None, ["model.kwargs.hidden_dim=32", "model.kwargs.n_layers=2", "model.kwargs.n_heads=2",
                             *MAPPING])
    model = plain_model(cfg, 7, 2, 0)
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"config": cfg.to_dict(), "pert_map": {"sham": 0, "burn": 1},
                                     "control": "sham", "embed_dim": 7, "batch_map": {},
                                     "lora_applied": False}},
               folder / f"{name}.ckpt")
    _write(small_demo, folder, name)


# --- issue 12: what the first corpus missed -------------------------------------------------------------


def _alias_bomb(depth: int = 8, width: int = 9) -> str:
    levels = ["&l0 [x,x,x,x,x,x,x,x,x]"] + [
        f"&l{i} [" + ",".join([f"*l{i - 1}"] * width) + "]" for i in range(1, depth + 1)]
    return "[" + ",".join(levels) + "]"


def _declares_terabytes(small_demo, folder: Path, name: str) -> None:
    """A valid .h5ad plus an obsm dataset that declares 1200 x 10^9 float32 (4.8 TB) and stores nothing."""
    import h5py

    _write(small_demo, folder, name)
    with h5py.File(folder / f"{name}.h5ad", "a") as f:
        f["obsm"].create_dataset("X_bomb", shape=(small_demo.n_obs, 10**9), dtype="float32", chunks=(1, 1024))


def _external_link(small_demo, folder: Path, name: str) -> None:
    """A valid .h5ad whose obsm has a link into another HDF5 file (which could lie anywhere on the server)."""
    import h5py

    _write(small_demo, folder, name)
    with h5py.File(folder / f"{name}-elsewhere.h5", "w") as other:
        other.create_dataset("secret", data=np.arange(small_demo.n_obs * 2, dtype=np.float32).reshape(-1, 2))
    with h5py.File(folder / f"{name}.h5ad", "a") as f:
        f["obsm"]["X_linked"] = h5py.ExternalLink(str(folder / f"{name}-elsewhere.h5"), "/secret")


def _hdf5_like(groups: tuple[str, ...]):
    def make(small_demo, folder: Path, name: str) -> None:
        import h5py

        with h5py.File(folder / f"{name}.h5ad", "w") as f:
            for group in groups:
                f.create_group(group).create_dataset("data", data=np.zeros(3, dtype=np.float32))
    return make


def _embedding(value_of):
    def edit(a):
        a.obsm["X_pca"] = value_of(a)
    return edit


def _sparse_embedding(a):
    import scipy.sparse as sp

    return sp.csr_matrix(np.asarray(a.obsm["X_pca"]))


def _integer_condition(a):
    """condition as 0/1 integers: no control-like value anywhere, so nothing may be guessed as the condition."""
    a.obs["condition"] = (a.obs["condition"] == "burn").astype(np.int64).to_numpy()
    a.obs = a.obs[["condition", "cell_types_simple_short", "mouse_id"]]


def _base_checkpoint(edit):
    """A genuine base checkpoint of the demo's 50-d embedding, then ``edit(ckpt)`` makes it inconsistent."""
    def make(small_demo, folder: Path, name: str) -> None:
        import torch

        from core.config import load_config
        from core.model.build import plain_model

        cfg = load_config(None, ["model.kwargs.hidden_dim=32", "model.kwargs.n_layers=2", "model.kwargs.n_heads=2",
                                 *MAPPING])
        model = plain_model(cfg, small_demo.obsm["X_pca"].shape[1], 2, 0)
        ckpt = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"config": cfg.to_dict(), "pert_map": {"sham": 0, "burn": 1},
                                     "control": "sham", "embed_dim": small_demo.obsm["X_pca"].shape[1],
                                     "batch_map": {}, "lora_applied": False}}
        edit(ckpt)
        torch.save(ckpt, folder / f"{name}.ckpt")
        _write(small_demo, folder, name)
    return make


def _labelled_gpt2(ckpt):  # LLaMA tensors under a config that says gpt2
    ckpt["hyper_parameters"]["config"]["model"]["kwargs"]["backbone"] = "gpt2"


def _renamed_tensors(ckpt):
    ckpt["state_dict"] = {k.replace("model.", "model.renamed_"): v for k, v in ckpt["state_dict"].items()}


def _malformed_hparams(ckpt):
    ckpt["hyper_parameters"]["config"] = ["not", "a", "mapping"]


def _hidden_size_disagrees(ckpt):
    ckpt["hyper_parameters"]["config"]["model"]["kwargs"]["hidden_dim"] = 64


def _perturbed_without_cell_type(a):
    cell_type = a.obs["cell_types_simple_short"].astype(object).to_numpy()
    cell_type[(a.obs["condition"] == "burn").to_numpy()] = np.nan
    a.obs["cell_types_simple_short"] = cell_type


INFER = ["infer", "--checkpoint", "{ckpt}", "--adata", "{data}", "--output", "{out}"]

ISSUE_12_CASES = [
    Case("yaml_alias_bomb", _train(f"run.name={_alias_bomb()}", data=False), "anchors and aliases"),
    Case("n_streams_permutations", _train("model.kwargs.use_mhc=true", "model.kwargs.mhc.projection=permutations",
                                          "model.kwargs.mhc.n_streams=11", data=False), "permutation matrices"),
    Case("n_layers_huge", _train("model.kwargs.n_layers=10000", data=False), "n_layers must be <="),
    Case("hidden_dim_huge", _train("model.kwargs.hidden_dim=65536", data=False), "hidden_dim must be <="),
    Case("learning_rate_inf", _train("training.learning_rate=inf", data=False), "must be a finite number"),
    Case("h5ad_declares_terabytes", _train(), "memory budget", _declares_terabytes),
    Case("h5ad_external_link", _train(), "links to another file", _external_link),
    Case("loom_file", _train(), "loom", _hdf5_like(("matrix_", "row_attrs", "col_attrs"))),
    Case("tenx_h5_file", _train(), "10x genomics", _hdf5_like(("matrix",))),
    Case("empty_hdf5", _train(), "empty hdf5", _hdf5_like(())),
    Case("embedding_n_by_0", _train(), "no dimensions",
         _edited(_embedding(lambda a: np.zeros((a.n_obs, 0), dtype=np.float32)))),
    Case("embedding_1d", _train(), "single dimension",
         _edited(_embedding(lambda a: np.asarray(a.obsm["X_pca"])[:, 0].copy()))),
    Case("embedding_integer", _train(), "floating point",
         _edited(_embedding(lambda a: np.round(np.asarray(a.obsm["X_pca"]) * 10).astype(np.int32)))),
    Case("embedding_sparse", _train(), "sparse matrix", _edited(_embedding(_sparse_embedding))),
    Case("integer_condition_guessed", ["train", "data.kwargs.path={data}", *TINY], "control value",
         _edited(_integer_condition)),
    Case("perturbed_cells_without_cell_type", _train(), "all have no cell type", _edited(_perturbed_without_cell_type)),
    Case("set_size_fits_before_split_only", _train("model.kwargs.cell_set_len=90"), "after the train/val/test split",
         _edited(lambda a: None)),
    Case("base_labelled_gpt2", _train("model.init_from={ckpt}"), "does not fit this model",
         _base_checkpoint(_labelled_gpt2)),
    Case("base_tensors_renamed", _train("model.init_from={ckpt}"), "do not match its own metadata",
         _base_checkpoint(_renamed_tensors)),
    Case("base_hparams_malformed", _train("model.init_from={ckpt}"), "not a state transition checkpoint",
         _base_checkpoint(_malformed_hparams)),
    Case("base_hidden_size_disagrees", _train("model.init_from={ckpt}"), "do not match its own metadata",
         _base_checkpoint(_hidden_size_disagrees)),
    Case("infer_hidden_size_disagrees", INFER, "other sizes than its own config",
         _base_checkpoint(_hidden_size_disagrees)),
    Case("infer_tensors_renamed", INFER, "does not match its own config", _base_checkpoint(_renamed_tensors)),
]

CASES = [
    Case("not_hdf5", _train(), "not an .h5ad (HDF5) file", _not_hdf5),
    Case("truncated_h5ad", _train(), "truncated", _truncated),
    Case("obs_column_missing", _train(), "'mouse_id' is not in obs", _edited(_drop_column)),
    Case("obs_column_not_chosen", ["train", "data.kwargs.path={data}", *TINY], "perturbation column",
         _edited(_no_obs_columns)),
    Case("obs_column_wrong_name", _train("data.kwargs.pert_col=treatment_arm"), "'treatment_arm'",
         _edited(lambda a: None)),
    Case("control_absent", _train(), "control value 'sham' does not occur", _edited(_rename_control)),
    Case("one_condition", _train(), "only the control value", _edited(_one_condition)),
    Case("nan_embedding", _train(), "NaN or inf", _edited(_set("X_pca", 3, 1, np.nan))),
    Case("inf_embedding", _train(), "NaN or inf", _edited(_set("X_pca", 5, 0, np.inf))),
    Case("nan_velocity", _train(*VELOCITY), "NaN or inf", _edited(_set("velocity_pca", 0, 0, np.nan))),
    Case("inf_velocity", _train(*VELOCITY), "NaN or inf", _edited(_set("velocity_pca", 2, 4, -np.inf))),
    Case("velocity_other_shape", _train(*VELOCITY), "same latent space", _edited(_velocity_other_shape)),
    Case("negative_confidence", _train(*VELOCITY), ">= 0", _edited(_negative_confidence)),
    Case("cell_types_too_small", _train("model.kwargs.cell_set_len=400"), "for set size 400",
         _edited(lambda a: None)),
    Case("not_a_checkpoint", _train("model.init_from={ckpt}", data=False), "not a", _not_a_checkpoint),
    Case("checkpoint_other_embedding_dim", _train("model.init_from={ckpt}"), "7-d embeddings",
         _other_embedding_dim),
    Case("infer_not_a_checkpoint", ["infer", "--checkpoint", "{ckpt}", "--adata", "{data}", "--output", "{out}"],
         "not a", lambda demo, folder, name: (_not_a_checkpoint(demo, folder, name), _write(demo, folder, name))),
    Case("infer_checkpoint_other_embedding_dim",
         ["infer", "--checkpoint", "{ckpt}", "--adata", "{data}", "--output", "{out}"],
         "trained on 7-d embeddings", _other_embedding_dim),
    Case("unknown_config_key", _train("training.learnig_rate=0.01", data=False),
         "unknown config key 'training.learnig_rate'"),
    Case("wrong_type", _train("training.max_epochs=three", data=False), "training.max_epochs must be a whole number"),
    Case("negative_learning_rate", _train("training.learning_rate=-0.001", data=False),
         "training.learning_rate must be > 0"),
    Case("layer_indices_beyond_depth", _train("model.kwargs.use_mhc=true", "model.kwargs.mhc.layer_indices=[0,5]",
                                              data=False), "layer_indices"),
    Case("sinkhorn_iters_zero", _train("model.kwargs.use_mhc=true", "model.kwargs.mhc.sinkhorn_iters=0", data=False),
         "sinkhorn_iters must be >= 1"),
    Case("velocity_not_hdf5", ["velocity", "--adata", "{data}", "--output", "{out}"], "not an .h5ad (HDF5) file",
         _not_hdf5),
    Case("velocity_overwrites_input", ["velocity", "--adata", "{data}", "--output", "{data}"], "never overwritten",
         _edited(lambda a: None)),
    *ISSUE_12_CASES,
]


def make_corpus(small_demo, folder: Path) -> list[Case]:
    """Write every case's files into ``folder``; returns the cases."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for case in CASES:
        if case.make is not None:
            case.make(small_demo, folder, case.name)
    return CASES


if __name__ == "__main__":
    import sys

    from core.data.demo import load_demo

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "bad_inputs_corpus")
    demo = load_demo("burn_sham", with_velocity=True)
    rng = np.random.default_rng(0)
    keep = np.concatenate([rng.choice(p, 100, replace=False) for p in
                           demo.obs.groupby(["cell_types_simple_short", "condition"], observed=True).indices.values()])
    for case in make_corpus(demo[np.sort(keep)].copy(), out):
        print(case.name, "python -m core", " ".join(case.command(out)))
