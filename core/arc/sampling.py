"""``--sampling arc``: sets and control draws exactly as arc-state 0.11.1's ``state tx infer`` makes them.

Arc's loop (``_cli/_tx/_infer.py``), reproduced so that our predictions on the same folder, file and seed equal
arc-state's (tests/unit/test_arc_sampling.py, against its committed output):
    rng = numpy.random.RandomState(seed)                  one stream for the whole file (default seed 42)
    for g in sorted unique cell types (all cells as one group without a cell-type column):
        pool = controls of g, else all controls
        for p in sorted unique perturbations of g:
            idxs = rows of (g, p) in file order
            for each window idxs[k : k + cell_set_len] (the last one shorter, no padding):
                controls = rng.choice(pool, size=len(window), replace=True)
                predict the window's rows from X[controls] with p's one-hot and the window's own batch indices
Every cell is predicted, controls too. Predictions replace ``obsm[embed_key]`` (``.X`` without --embed-key); a
gene-space model's decoded counts go to ``obsm["X_hvg"]``.

Where Arc is silent or lossy, this reports instead of copying: a perturbation label the model never saw is an
error (Arc predicts it as the control without saying so under --quiet); batch labels the model never saw are
listed (they take batch row 0 as in Arc, so predictions still match); Arc clips gene-space latents and counts
to [0, 14], here only with ``clip=True`` (the latent of a gene-space model is signed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.arc.folder import ArcFolder
from core.errors import CheckpointError, DataError

CELL_TYPE_FALLBACKS = ("cell_type", "celltype", "cellType", "ctype", "celltype_col")
BATCH_FALLBACKS = ("gem_group", "gemgroup", "batch", "donor", "plate", "experiment", "lane", "batch_id")
ARC_CLIP = (0.0, 14.0)


@dataclass
class ArcPrediction:
    latent: np.ndarray  # [n, o], row i predicted for cell i
    counts: np.ndarray | None  # [n, g] decoded counts of a gene-space model
    latent_key: str | None  # obsm key the latent replaces (None: .X)
    n_windows: int
    keys: dict  # the columns used
    notes: list[str] = field(default_factory=list)


def _data_kwargs(folder: ArcFolder) -> dict:
    return dict((folder.config.get("data") or {}).get("kwargs") or {})


def resolve_columns(folder: ArcFolder, adata, embed_key, pert_col, control_pert, celltype_col, batch_col) -> dict:
    """Arc's defaults for flags left out: the folder's config first, then the names Arc tries."""
    d = _data_kwargs(folder)
    control = control_pert if control_pert is not None else (d.get("control_pert") or folder.control)
    if celltype_col is None:
        wanted = [d.get("cell_type_key")] if d.get("cell_type_key") else []
        celltype_col = next((c for c in wanted + list(CELL_TYPE_FALLBACKS) if c in adata.obs), None)
    if batch_col is None:
        batch_col = d.get("batch_col")
    if pert_col is None:
        pert_col = d.get("pert_col")
    if pert_col is None or pert_col not in adata.obs:
        raise DataError(f"the perturbation column {pert_col!r} is not in obs (it has {list(adata.obs.columns)[:12]}); "
                        "pass --pert-col")
    if control is None:
        raise DataError("the folder's config names no control perturbation; pass --control-pert")
    return {"embed_key": embed_key, "pert_col": pert_col, "control_pert": str(control), "celltype_col": celltype_col,
            "batch_col": batch_col}


def input_matrix(folder: ArcFolder, adata, embed_key: str | None) -> np.ndarray:
    """The model's input [n, input_dim] from obsm[embed_key] (or .X), checked against input_dim."""
    input_dim = int(folder.hparams["input_dim"])
    if embed_key is None:
        x = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
        where = ".X"
    else:
        if embed_key not in adata.obsm:
            hint = (f"; this model reads the HVG matrix: put the {input_dim} highly variable genes it was trained on, "
                    "in its gene order, into obsm['X_hvg']" if embed_key == "X_hvg" else "")
            raise DataError(f"obsm['{embed_key}'] is not in the data (it has {list(adata.obsm)}); the model was "
                            f"trained on obsm['{folder.embed_key}'] ({input_dim}-d){hint}")
        x, where = np.asarray(adata.obsm[embed_key]), f"obsm['{embed_key}']"
    if x.ndim != 2 or x.shape[1] != input_dim:
        raise CheckpointError(f"{where} has {x.shape[-1]} dimensions but the model takes {input_dim}-d input "
                              f"(input_dim, trained on '{folder.embed_key}'); give the embedding it was trained on")
    return x.astype(np.float32, copy=False)


def predict_arc(model, folder: ArcFolder, adata, *, embed_key=None, pert_col=None, control_pert=None,
                celltype_col=None, batch_col=None, seed: int = 42, max_set_len: int | None = None,
                clip: bool = False) -> ArcPrediction:
    import torch

    cols = resolve_columns(folder, adata, embed_key, pert_col, control_pert, celltype_col, batch_col)
    x_in = input_matrix(folder, adata, embed_key)
    set_len = int(max_set_len or model.spec.cell_set_len)
    perts = adata.obs[cols["pert_col"]].astype(str).to_numpy()
    notes: list[str] = []
    unseen = sorted(set(perts) - set(folder.pert_map))
    if unseen:
        raise DataError(f"perturbation(s) {unseen[:5]} are not in the model's pert_onehot_map (it knows "
                        f"{sorted(folder.pert_map)[:8]}); Arc would predict them as the control without saying so")

    batch_idx = None
    if model.batch_embedding is not None:
        col = cols["batch_col"]
        if col is None:
            col = next((c for c in BATCH_FALLBACKS if c in adata.obs), None)
        if col is not None and col in adata.obs:
            labels = adata.obs[col].astype(str).to_numpy()
            batch_idx = np.array([folder.batch_map.get(b, 0) for b in labels], dtype=np.int64)
            unknown = sorted(set(labels) - set(folder.batch_map))
            if unknown:
                n = int(np.isin(labels, unknown).sum())
                notes.append(f"batch labels {unknown[:5]} ({n} of {len(labels)} cells) are not in the model's "
                             f"batch map {sorted(folder.batch_map)[:5]}: they take batch row 0, as in arc-state")
            cols["batch_col"] = col
        else:
            notes.append("the model has a batch encoder but no batch column was found: no batch term used")

    control = cols["control_pert"]
    is_control = perts == control
    if not is_control.any():
        raise DataError(f"no cell has the control label '{control}' in '{cols['pert_col']}'; pass --control-pert")
    if cols["celltype_col"] and cols["celltype_col"] in adata.obs:
        groups = adata.obs[cols["celltype_col"]].astype(str).to_numpy()
    else:
        groups = np.full(adata.n_obs, "__ALL__")
        notes.append("no cell-type column: all cells form one group, as in arc-state")
    all_controls = np.flatnonzero(is_control)

    latent = x_in.copy() if model.spec.output_dim == x_in.shape[1] else np.zeros((adata.n_obs, model.spec.output_dim),
                                                                                 np.float32)
    counts = None
    rng = np.random.RandomState(seed)
    n_windows = 0
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        for g in np.unique(groups):
            rows_g = np.flatnonzero(groups == g)
            pool = np.flatnonzero((groups == g) & is_control)
            pool = pool if len(pool) else all_controls
            for p in np.unique(perts[rows_g]):
                idxs = rows_g[perts[rows_g] == p]
                column = torch.tensor([folder.pert_map[p]], device=device)
                for start in range(0, len(idxs), set_len):
                    window = idxs[start:start + set_len]
                    drawn = rng.choice(pool, size=len(window), replace=True)
                    z = torch.from_numpy(x_in[drawn]).to(device)[None]
                    b = torch.from_numpy(batch_idx[window]).to(device)[None] if batch_idx is not None else None
                    out = model(z, column, b)
                    latent[window] = out[0].float().cpu().numpy()
                    genes = model.decode_genes(out)
                    if genes is not None:
                        if counts is None:
                            counts = np.zeros((adata.n_obs, genes.shape[-1]), np.float32)
                        counts[window] = genes[0].float().cpu().numpy()
                    n_windows += 1
    writes_counts = embed_key is not None and ((embed_key != "X_hvg" and model.spec.output_space == "gene")
                                               or model.spec.output_space == "all")
    if not writes_counts:
        counts = None
    if model.spec.output_space in ("gene", "all"):
        if clip:
            np.clip(latent, *ARC_CLIP, out=latent)
            if counts is not None:
                np.clip(counts, *ARC_CLIP, out=counts)
            notes.append("latent and counts clipped to [0, 14] as arc-state does (--arc-clip)")
        else:
            notes.append("gene-space latent not clipped (arc-state clips it to [0, 14]; --arc-clip to do the same)")
    key = embed_key if model.spec.output_dim == x_in.shape[1] else (f"{embed_key}_pred" if embed_key else None)
    return ArcPrediction(latent=latent, counts=counts, latent_key=key, n_windows=n_windows, keys=cols, notes=notes)


def write_like_arc(adata, pred: ArcPrediction, output_space: str):
    """A copy of the input with predictions where arc-state writes them (the input object is not changed)."""
    out = adata.copy()
    if pred.latent_key is None:
        out.X = pred.latent
    else:
        out.obsm[pred.latent_key] = pred.latent
    if pred.counts is not None:
        if output_space == "all":
            out.X = pred.counts
        else:
            out.obsm["X_hvg"] = pred.counts
    out.uns["st_infer"] = {"sampling": "arc", "n_windows": int(pred.n_windows), "notes": list(pred.notes),
                           **{k: v for k, v in pred.keys.items() if v is not None}}
    return out
