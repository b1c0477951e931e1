"""From the latent a model predicts in back to genes: the decoder a run's embedding or model provides, or none.

Two decoders exist, and nothing is guessed when neither applies:

    pca   the embedding is a PCA of the data's genes with its loadings stored (scanpy's ``sc.pp.pca`` writes
          ``obsm['X_pca']`` and ``varm['PCs']`` [genes, D]; the demo as well):  x = mean + z PCs^T.
          The mean is ``var['pca_mean']`` when the data stores it (the demo), else ``adata.X``'s gene means,
          which is what scanpy centred with (it stores none), else 0 when ``uns['pca']['params']['zero_center']``
          is False. Genes whose loadings are all zero (outside scanpy's ``mask_var``, e.g. non-HVGs) are not
          decoded. x lies in the space the PCA was fitted on, log-normalised expression for a standard workflow.
    arc   an Arc State gene-space model (``output_space: gene``): its gene decoder maps the latent to HVG
          expression (the targets it was trained on are ``obsm['X_hvg']``).

``observed_expression`` returns the matching observed gene matrix (``adata.X`` for a PCA, ``obsm['X_hvg']`` for
Arc's decoder), so that predicted and observed changes are in the same genes and units.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.errors import DataError

MAX_DECODED_VALUES = 200_000_000  # cells x genes held at once (float64: 1.6 GB); bounded before allocating


@dataclass
class GeneDecoder:
    """Latent [n, D] -> gene expression [n, g] for the genes ``genes`` (``observed`` says where the data holds
    them). ``description`` is the sentence shown beside every gene-space number."""

    kind: str                       # "pca" | "arc"
    genes: np.ndarray               # [g] names
    description: str
    observed: str                   # "X" | "obsm['X_hvg']"
    loadings: np.ndarray | None = None   # [g, D] (pca)
    mean: np.ndarray | None = None       # [g] (pca)
    model: object = None                 # the torch model (arc)
    gene_columns: np.ndarray | None = field(default=None, repr=False)  # columns of X decoded (pca)

    def decode(self, latent) -> np.ndarray:
        latent = np.asarray(latent, dtype=np.float64)
        _check_size(latent.shape[0], len(self.genes))
        if self.kind == "pca":
            return self.mean + latent @ self.loadings.T
        import torch

        device = next(self.model.parameters()).device
        with torch.no_grad():
            out = [self.model.decode_genes(torch.as_tensor(chunk, dtype=torch.float32, device=device)).float().cpu()
                   for chunk in np.array_split(latent, max(1, len(latent) // 4096 + 1))]
        return torch.cat(out).numpy().astype(np.float64)


def _check_size(n_cells: int, n_genes: int) -> None:
    if n_cells * n_genes > MAX_DECODED_VALUES:
        raise DataError(f"decoding {n_cells} cells x {n_genes} genes exceeds {MAX_DECODED_VALUES:,} values; evaluate "
                        "with fewer held-out cells or fewer genes")


def _dense_rows(matrix, rows=None, columns=None) -> np.ndarray:
    import scipy.sparse as sp

    part = matrix if rows is None else matrix[np.asarray(rows)]
    if columns is not None:
        part = part[:, columns]
    return np.asarray(part.toarray() if sp.issparse(part) else part, dtype=np.float64)


def pca_decoder(adata, embed_key: str) -> tuple[GeneDecoder | None, str]:
    """(decoder, why) for a PCA embedding with stored loadings; (None, the reason) otherwise."""
    if embed_key != "X_pca":
        return None, (f"obsm['{embed_key}'] is not a PCA with stored loadings (only X_pca with varm['PCs'] is "
                      "decoded)")
    if "PCs" not in adata.varm:
        return None, "obsm['X_pca'] has no loadings: varm['PCs'] is missing (sc.pp.pca writes it)"
    loadings = np.asarray(adata.varm["PCs"], dtype=np.float64)
    dim = np.asarray(adata.obsm[embed_key]).shape[1]
    if loadings.ndim != 2 or loadings.shape != (adata.n_vars, dim):
        return None, (f"varm['PCs'] has shape {loadings.shape} but the data has {adata.n_vars} genes and "
                      f"obsm['X_pca'] {dim} dimensions; it is not this embedding's loadings")
    used = np.flatnonzero(np.abs(loadings).sum(1) > 0)
    if used.size == 0:
        return None, "varm['PCs'] is all zeros"
    params = (adata.uns.get("pca") or {}).get("params") or {} if isinstance(adata.uns.get("pca"), dict) else {}
    if "pca_mean" in adata.var:
        mean = adata.var["pca_mean"].to_numpy(np.float64)[used]
        source = "var['pca_mean']"
    elif params.get("zero_center", True) is False:
        mean, source = np.zeros(used.size), "none (the PCA was not centred)"
    else:
        if adata.X is None:
            return None, "the data has no X to take the gene means the PCA was centred with from"
        # column means without densifying X (sparse or dense alike)
        mean = np.asarray(adata.X[:, used].mean(0), dtype=np.float64).ravel()
        source = "the gene means of X (scanpy stores none; X must be the matrix the PCA was fitted on)"
    genes = np.asarray(adata.var_names)[used].astype(str)
    description = (f"decoded through the PCA loadings varm['PCs'] ({used.size} genes, {dim} components; gene means "
                   f"from {source}): x = mean + z PCs^T, compared with X")
    return GeneDecoder("pca", genes, description, "X", loadings=loadings[used], mean=mean, gene_columns=used), ""


def arc_decoder(model, adata) -> tuple[GeneDecoder | None, str]:
    """(decoder, why) for a model with Arc's gene decoder; (None, the reason) otherwise."""
    if getattr(model, "gene_decoder", None) is None:
        return None, "the model has no gene decoder"
    n_genes = int(model.spec.decoder_cfg["gene_dim"])
    if "X_hvg" not in adata.obsm:
        return None, (f"the model decodes to {n_genes} genes, trained against obsm['X_hvg'], which this data lacks; "
                      "add the HVG matrix it was trained on")
    width = np.asarray(adata.obsm["X_hvg"]).shape[1]
    if width != n_genes:
        return None, f"obsm['X_hvg'] has {width} genes but the model's gene decoder {n_genes}"
    names = adata.uns.get("hvg_names") if "hvg_names" in adata.uns else None
    if names is None and adata.n_vars == n_genes:
        names = adata.var_names
    genes = np.asarray(names if names is not None else [f"hvg_{i}" for i in range(n_genes)]).astype(str)
    description = (f"decoded through the model's gene decoder (Arc State, {n_genes} genes), compared with "
                   "obsm['X_hvg']")
    return GeneDecoder("arc", genes, description, "obsm['X_hvg']", model=model), ""


def gene_decoder(adata, embed_key: str, model=None) -> tuple[GeneDecoder | None, str]:
    """The model's own gene decoder when it has one, else the embedding's PCA loadings, else (None, why)."""
    if model is not None and getattr(model, "gene_decoder", None) is not None:
        return arc_decoder(model, adata)
    decoder, why = pca_decoder(adata, embed_key)
    if decoder is None:
        why = f"no decoder to genes: {why}, and the model has no gene decoder; gene-space results are not computed"
    return decoder, why


def observed_expression(decoder: GeneDecoder, adata, rows) -> np.ndarray:
    """The observed expression [len(rows), g] of the decoder's genes, for cells ``rows`` of ``adata``."""
    _check_size(len(rows), len(decoder.genes))
    if decoder.kind == "pca":
        return _dense_rows(adata.X, rows, decoder.gene_columns)
    return _dense_rows(adata.obsm["X_hvg"], rows)
