"""Predictions of a trained ST model: each control cell, in a set of S control cells of its cell type, turned
into a predicted perturbed cell; used by ``python -m core infer`` and by the evaluator.

The predictions AnnData has one row per (control cell, perturbation), named ``<control cell>|<perturbation>``:
    obsm["X_pred"]           [n, D] predicted perturbed embedding z_pred
    obsm["delta_z"]          [n, D] z_pred - z_control
    obs["matched_control"]   the control cell each prediction starts from (so delta_z can be recomputed)
    obs[<pert_col>]          the perturbation predicted;  obs[<cell_type_key>], obs[<batch_col>] of the control
    obs["set_index"]         which input set the control cell was in (predictions depend on the set)
    uns["st_infer"]          checkpoint, keys, set size, seed and notes
Sets are formed as in training: control cells of one cell type (and batch, when the run matched by batch), in
a seeded random order, cut into sets of S; the last set is filled up to S with other controls of the group,
whose outputs are dropped. A perturbation the model was not trained on is an error, never a silent fallback.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from core.data.mapping import ColumnMapping
from core.errors import CheckpointError, DataError
from core.io.atomic import atomic_write_with

log = logging.getLogger("core.infer")

PRED_KEY, DELTA_KEY, MATCHED_KEY = "X_pred", "delta_z", "matched_control"
CHECKPOINT_ORDER = ("best.ckpt", "final.ckpt", "last.ckpt")


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A .ckpt file, or a run folder (its checkpoints/best.ckpt, else final.ckpt, else last.ckpt)."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name in CHECKPOINT_ORDER:
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
        raise CheckpointError(f"{path} has no checkpoints/best.ckpt, final.ckpt or last.ckpt; has the run trained?")
    return path


def load_model(checkpoint: str | os.PathLike, device: str | None = None):
    """(model in eval mode on ``device``, its config, its hyper-parameters) from a checkpoint or a run folder,
    ours or Arc State's (core/arc/runtime.py)."""
    from core.arc.finetune import skeleton_for
    from core.arc.runtime import arc_run_for_infer, find_arc_folder
    from core.io.checkpoint import load_checkpoint
    from core.model.build import build_for_checkpoint

    arc = find_arc_folder(checkpoint)
    if arc is not None:
        model, cfg, hp = arc_run_for_infer(*arc)
        return model.to(device or _device()), cfg, hp
    path = resolve_checkpoint(checkpoint)
    ckpt = load_checkpoint(path)
    model, cfg, hp = build_for_checkpoint(ckpt, path, skeleton=skeleton_for(ckpt))
    return model.to(device or _device()), cfg, hp


def _device() -> str:
    from core.training.devices import device_choice

    return device_choice("auto")[1]


def run_mapping(cfg, overrides: ColumnMapping | dict | None = None) -> ColumnMapping:
    """The data keys a run trained with (its resolved data.kwargs), with any non-empty ``overrides`` on top."""
    d = cfg.data.kwargs
    fields = {k: getattr(d, k) for k in ColumnMapping.__dataclass_fields__}
    extra = overrides.to_dict() if isinstance(overrides, ColumnMapping) else dict(overrides or {})
    unknown = set(extra) - set(fields)
    if unknown:
        raise DataError(f"unknown mapping keys {sorted(unknown)}; use {sorted(fields)}")
    fields.update({k: v for k, v in extra.items() if v is not None})
    return ColumnMapping(**fields)


def run_dataset(cfg):
    """The AnnData a run trained on (core.data.datasets decides which)."""
    from core.data.datasets import load_run_data, run_data

    return load_run_data(run_data(cfg))


def _select(adata, cells) -> np.ndarray:
    """Boolean mask over cells from None (all), a boolean mask, or obs names."""
    if cells is None:
        return np.ones(adata.n_obs, dtype=bool)
    cells = np.asarray(cells)
    if cells.dtype == bool:
        if cells.shape != (adata.n_obs,):
            raise DataError(f"the cell mask has {cells.shape[0]} entries but the data has {adata.n_obs} cells")
        return cells
    positions = adata.obs_names.get_indexer(cells.astype(str))
    if (positions < 0).any():
        missing = list(cells[positions < 0][:3])
        raise DataError(f"cells {missing} are not in the data set; give obs names of this data set")
    mask = np.zeros(adata.n_obs, dtype=bool)
    mask[positions] = True
    return mask


def _check_data(adata, mapping: ColumnMapping, hp: dict) -> None:
    if mapping.embed_key not in adata.obsm:
        raise DataError(f"obsm['{mapping.embed_key}'] is not in the data (it has {list(adata.obsm)}); pass the "
                        "embedding the model was trained on (--embed-key)")
    dim = np.asarray(adata.obsm[mapping.embed_key]).shape[1]
    if dim != hp["embed_dim"]:
        raise CheckpointError(f"the model was trained on {hp['embed_dim']}-d embeddings but "
                              f"obsm['{mapping.embed_key}'] has {dim} dimensions; pass the embedding it was trained on")
    for what, col in (("perturbation", mapping.pert_col), ("cell type", mapping.cell_type_key)):
        if col not in adata.obs:
            raise DataError(f"the {what} column '{col}' is not in obs (it has {list(adata.obs.columns)[:12]})")
    if mapping.control_pert not in set(adata.obs[mapping.pert_col].astype(str)):
        raise DataError(f"no cell has the control value '{mapping.control_pert}' in '{mapping.pert_col}'; pass the "
                        "control label (--control-pert)")


def _sets(groups: dict, set_len: int, rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    """[(cell rows [set_len], number of real cells at the front)] for every group of control rows."""
    sets = []
    for _, rows in sorted(groups.items()):
        order = rng.permutation(rows)
        for start in range(0, len(order), set_len):
            chunk = order[start:start + set_len]
            n_real, missing = len(chunk), set_len - len(chunk)
            if missing:
                others = np.setdiff1d(rows, chunk)
                pool = others if len(others) >= missing else rows
                chunk = np.concatenate([chunk, rng.choice(pool, missing, replace=len(pool) < missing)])
            sets.append((chunk, n_real))
    return sets


def predict(checkpoint, adata=None, *, control_cells=None, perturbations=None,
            mapping: ColumnMapping | dict | None = None, set_len: int | None = None, seed: int = 0,
            batch_size: int = 32, device: str | None = None, loaded=None):
    """Predict the perturbed state of control cells (see the module docstring for the output).

    checkpoint      a .ckpt written by training, or a run folder (best, else final, else last checkpoint)
    adata           the data; default the run's own data set (its path, or the demo). Never modified.
    control_cells   which cells to start from: obs names or a boolean mask (default: all); only control cells
                    among them are used
    perturbations   labels to predict (default: every perturbation the model knows except the control)
    mapping         a ColumnMapping or a dict of the keys to change from the run's (embed_key, pert_col,
                    control_pert, cell_type_key, batch_col)
    set_len         cells per set (default: the run's cell_set_len)
    loaded          (model, config, hyper-parameters) as ``load_model`` returns them, when the caller has already
                    loaded the checkpoint (the CLI's Arc path, which prints the load report first)
    """
    import anndata as ad
    import pandas as pd
    import torch

    if loaded is None:
        model, cfg, hp = load_model(checkpoint, device)
    else:
        model, cfg, hp = loaded
        model = model.to(device or _device())
    dev = next(model.parameters()).device
    if adata is None:
        adata = run_dataset(cfg)
    mapping = run_mapping(cfg, mapping)
    _check_data(adata, mapping, hp)
    set_len = set_len or cfg.model.kwargs.cell_set_len
    if set_len < 1:
        raise DataError(f"set_len must be >= 1; got {set_len}")

    pert_map, notes = hp["pert_map"], []
    known = [label for label in pert_map if label != hp["control"]]
    wanted = list(perturbations) if perturbations is not None else known
    unknown = [p for p in wanted if p not in pert_map or p == hp["control"]]
    if unknown:
        raise CheckpointError(f"the model was not trained on perturbation(s) {unknown}; it knows {known} (fine-tune "
                              "on data with them to add them)")
    if not wanted:
        raise CheckpointError("the model knows no perturbation besides the control; nothing to predict")

    obs = adata.obs
    is_control = (obs[mapping.pert_col].astype(str) == mapping.control_pert).to_numpy()
    use = _select(adata, control_cells) & is_control
    if not use.any():
        raise DataError("none of the chosen cells is a control cell; predictions start from control cells")
    cell_type = obs[mapping.cell_type_key].astype(str).to_numpy()
    batch = obs[mapping.batch_col].astype(str).to_numpy() if mapping.batch_col and mapping.batch_col in obs else None
    by_batch = cfg.data.kwargs.match_by == "cell_type_batch" and batch is not None
    chosen = np.flatnonzero(use)
    frame = pd.DataFrame({"cell_type": cell_type[chosen], **({"batch": batch[chosen]} if by_batch else {})})
    groups = {key: chosen[idx] for key, idx in frame.groupby(list(frame.columns), sort=True).indices.items()}
    sets = _sets(groups, set_len, np.random.default_rng(seed))

    batch_idx = None
    if hp["batch_map"]:
        unknown_row = len(hp["batch_map"])
        if batch is None:
            notes.append("the model has a batch covariate but no batch column was given: no batch term used")
            batch_idx = np.full(adata.n_obs, unknown_row, dtype=np.int64)
        else:
            batch_idx = np.array([hp["batch_map"].get(b, unknown_row) for b in batch], dtype=np.int64)
            new = sorted(set(batch[use]) - set(hp["batch_map"]))
            if new:
                notes.append(f"batches {new} were not seen in training: their cells get no batch term")

    z = np.asarray(adata.obsm[mapping.embed_key], dtype=np.float32)
    rows_out, preds, labels, set_ids = [], [], [], []
    model.eval()
    with torch.no_grad():
        for label in wanted:
            for start in range(0, len(sets), batch_size):
                chunk = sets[start:start + batch_size]
                rows = np.stack([s for s, _ in chunk])
                z_control = torch.from_numpy(z[rows]).to(dev)
                pert = torch.full((len(chunk),), pert_map[label], dtype=torch.long, device=dev)
                b_idx = torch.from_numpy(batch_idx[rows]).to(dev) if batch_idx is not None else None
                z_pred = model(z_control, pert, b_idx).float().cpu().numpy()
                for k, (set_rows, n_real) in enumerate(chunk):
                    rows_out.append(set_rows[:n_real])
                    preds.append(z_pred[k, :n_real])
                    labels += [label] * n_real
                    set_ids += [start + k] * n_real
    rows_out = np.concatenate(rows_out)
    z_pred = np.concatenate(preds).astype(np.float32)
    control_names = adata.obs_names.to_numpy()[rows_out].astype(str)
    out_obs = pd.DataFrame({MATCHED_KEY: control_names, mapping.pert_col: labels,
                            mapping.cell_type_key: cell_type[rows_out]},
                           index=[f"{c}|{p}" for c, p in zip(control_names, labels)])
    if batch is not None:
        out_obs[mapping.batch_col] = batch[rows_out]
    out_obs["set_index"] = np.asarray(set_ids, dtype=np.int64)
    for col in (mapping.pert_col, mapping.cell_type_key) + ((mapping.batch_col,) if batch is not None else ()):
        out_obs[col] = out_obs[col].astype("category")
    result = ad.AnnData(obs=out_obs)
    result.obsm[PRED_KEY] = z_pred
    result.obsm[DELTA_KEY] = z_pred - z[rows_out]
    result.uns["st_infer"] = {"checkpoint": hp.get("checkpoint") or str(resolve_checkpoint(checkpoint)), **{
        k: v for k, v in mapping.to_dict().items() if v is not None and k not in ("velocity_key", "confidence_key")},
        "set_len": int(set_len), "seed": int(seed), "perturbations": wanted, "n_sets": len(sets),
        "match_by": "cell_type_batch" if by_batch else "cell_type", "notes": notes}
    for note in notes:
        log.info(note)
    return result


def write_predictions(predictions, output: str | os.PathLike, input_path: str | os.PathLike | None = None) -> Path:
    """Write the predictions .h5ad atomically (temp file + rename); refuses to write over the input file."""
    output = Path(output).expanduser()
    if output.is_dir():
        raise DataError(f"--output {output} is a folder; give a file name such as preds.h5ad")
    if input_path is not None:
        source = Path(input_path).expanduser()
        if output.resolve() == source.resolve() or (output.exists() and os.path.samefile(output, source)):
            raise DataError("--output must differ from --adata: the input file is never overwritten")
    atomic_write_with(output, predictions.write_h5ad)
    return output
