"""What latent space an embedding lives in, so a base model can say whether a user's data can be in its space.

An ST model learns shifts in one latent space. A base pretrained on obsm['X_pca'] of one PCA has dimensions
that mean nothing for another PCA of the same size (another gene set, other loadings), yet a bare dimension
check accepts it. A base therefore records its embedding's fingerprint (``embedding_fingerprint``) in its
checkpoint, and ``same_space_warnings`` compares it with the user's:

    key            the obsm key, e.g. 'X_pca'
    dim            its number of dimensions
    n_genes        genes the embedding was computed from (non-zero loadings when there are any, else all)
    gene_hash      sha256 of those gene names, sorted
    loadings_hash  sha256 of the loadings (varm['PCs'] for X_pca, rounded to 1e-4), or None without them
    genes          the gene names themselves (at most MAX_GENES, for the overlap in a warning), or None

Equal loadings mean the same space; equal genes without loadings may be the same space; anything else is not.
"""

from __future__ import annotations

import hashlib

import numpy as np

MAX_GENES = 20_000


def _loadings_key(embed_key: str) -> str | None:
    # scanpy's sc.pp.pca writes X_pca with its loadings in varm['PCs']; other embeddings have none we know.
    return "PCs" if embed_key == "X_pca" else None


def _sha(parts) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else str(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def embedding_fingerprint(adata, embed_key: str) -> dict:
    """The fingerprint of ``adata.obsm[embed_key]`` (see the module docstring); plain values only, so it can
    go into a checkpoint's hyper-parameters and be read with ``torch.load(weights_only=True)``."""
    z = adata.obsm[embed_key]
    genes = np.asarray(adata.var_names).astype(str)
    loadings = None
    key = _loadings_key(embed_key)
    if key is not None and key in getattr(adata, "varm", {}):
        pcs = np.asarray(adata.varm[key], dtype=np.float64)
        if pcs.ndim == 2 and pcs.shape[1] == z.shape[1]:
            used = np.abs(pcs).sum(1) > 0
            genes, loadings = genes[used], pcs[used]
    order = np.argsort(genes)
    genes = genes[order]
    loadings_hash = None
    if loadings is not None:
        rounded = np.round(loadings[order], 4).astype(np.float32) + np.float32(0.0)  # no -0.0
        loadings_hash = _sha([rounded.tobytes()])
    return {
        "key": str(embed_key),
        "dim": int(z.shape[1]),
        "n_genes": int(len(genes)),
        "gene_hash": _sha(genes.tolist()),
        "loadings_hash": loadings_hash,
        "genes": genes.tolist() if len(genes) <= MAX_GENES else None,
    }


def same_space_warnings(base: dict | None, data: dict) -> list[str]:
    """Plain sentences saying why ``data``'s embedding may not be in the space the base was trained in
    (none when it is). A dimension mismatch is the validator's error, not repeated here."""
    if not base or base.get("dim") != data["dim"]:
        return []
    if not base.get("gene_hash"):
        return [f"the base model does not record which embedding it was trained on (an older checkpoint), so "
                f"whether obsm['{data['key']}'] is in its space cannot be checked"]
    if base.get("loadings_hash") and base["loadings_hash"] == data.get("loadings_hash"):
        return []
    if not base.get("loadings_hash") and base["gene_hash"] == data["gene_hash"] and base["key"] == data["key"]:
        return []
    same_genes = base["gene_hash"] == data["gene_hash"]
    if same_genes and base.get("loadings_hash") and not data.get("loadings_hash"):
        return [f"obsm['{data['key']}'] has the genes of the base's obsm['{base['key']}'] but no loadings to show "
                "that it is the same projection; if it is not the base's own embedding of your cells, its "
                "dimensions mean different things here"]
    if same_genes:
        why = "the same genes but other loadings (another PCA)"
    elif base.get("genes") and data.get("genes"):
        shared = len(set(base["genes"]) & set(data["genes"]))
        why = (f"another gene set ({shared:,} of your {data['n_genes']:,} genes are among the base's "
               f"{base['n_genes']:,})")
    else:
        why = f"another gene set ({data['n_genes']:,} genes here, {base['n_genes']:,} in the base)"
    return [f"obsm['{data['key']}'] is not the space the base was trained in: the base used obsm['{base['key']}'] "
            f"({base['dim']}-d) computed from {why}, so its dimensions mean different things here; project your "
            "cells with the base's own embedding, or train from scratch"]
