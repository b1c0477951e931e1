"""What an Arc State folder expects of a data set, and whether a given AnnData meets it, before anything trains.

One call for the CLI (``python -m core arc DIR --adata FILE``) and for the app's pages: the folder's
expectations (embedding key and dimension, output space, control, the perturbations and batches it knows), then
one finding per check, each (level, text) with level "ok", "note" (works, but read it) or "error" (cannot run).
"""

from __future__ import annotations

import numpy as np

from core.arc.folder import ArcFolder


def check_data(folder: ArcFolder, adata, embed_key=None, pert_col=None, control_pert=None, batch_col=None):
    """[(level, text)] for ``adata`` against ``folder``; the keys default to the folder's training config."""
    d = dict((folder.config.get("data") or {}).get("kwargs") or {})
    embed_key = embed_key or folder.embed_key
    pert_col = pert_col or d.get("pert_col")
    batch_col = batch_col or d.get("batch_col")
    control = control_pert or folder.control
    input_dim = int(folder.hparams["input_dim"])
    found = []
    if embed_key not in adata.obsm:
        found.append(("error", f"obsm['{embed_key}'] is missing (the data has {list(adata.obsm)}); the model takes "
                               f"{input_dim}-d input, trained on obsm['{folder.embed_key}']"))
    else:
        dim = np.asarray(adata.obsm[embed_key]).shape[1]
        level = "ok" if dim == input_dim else "error"
        found.append((level, f"obsm['{embed_key}'] has {dim} dimensions; the model takes {input_dim}"))
    if pert_col is None or pert_col not in adata.obs:
        found.append(("error", f"the perturbation column {pert_col!r} is not in obs; pass it"))
        return found
    labels = set(adata.obs[pert_col].astype(str))
    if control not in labels:
        found.append(("error", f"no cell has the control label '{control}' in '{pert_col}'; pass the control"))
    else:
        mapped = "its own control" if control == folder.control else f"Arc's control '{folder.control}'"
        found.append(("ok", f"control '{control}' ({int((adata.obs[pert_col].astype(str) == control).sum())} cells) "
                            f"takes {mapped}"))
    known = sorted(labels & set(folder.pert_map) - {control})
    new = sorted(labels - set(folder.pert_map) - {control})
    if known:
        found.append(("ok", f"perturbations the model knows: {known}"))
    if new:
        found.append(("note", f"perturbations new to the model: {new}; fine-tuning gives each a new one-hot column, "
                              "inference refuses them until then"))
    if folder.batch_map is not None and batch_col and batch_col in adata.obs:
        batches = set(adata.obs[batch_col].astype(str))
        unseen = sorted(batches - set(folder.batch_map))
        if unseen:
            found.append(("note", f"batches new to the model in '{batch_col}': {unseen[:8]}"))
    return found
