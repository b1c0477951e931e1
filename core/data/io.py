"""Reading .h5ad files from a path or from uploaded bytes, with one-line errors for what users hit."""

from __future__ import annotations

import io
from pathlib import Path

import anndata as ad

from core.data.h5_budget import check_h5ad
from core.errors import DataError

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def read_h5ad(source, backed: bool = False, lazy_layers: bool = False) -> ad.AnnData:
    """AnnData from a path (``backed=True`` keeps X on disk, for large files) or from bytes (an upload).
    ``lazy_layers`` (with ``backed``): sparse layers stay on disk too, read when used (the app's viewer).

    Nothing is unpickled: h5ad stores arrays and strings, and anndata reads them without pickle.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data.startswith(_HDF5_SIGNATURE):
            raise DataError("the uploaded file is not an .h5ad (HDF5) file; export it with adata.write_h5ad()")
        check_h5ad(io.BytesIO(data), "the uploaded file")  # headers only: AnnData? fits the memory budget?
        try:
            return ad.read_h5ad(io.BytesIO(data))
        except Exception as err:  # h5py/anndata raise many types for damaged files
            raise DataError(f"the uploaded .h5ad could not be read ({_short(err)}); is it complete?") from err
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"no file at {path}; check the path")
    if path.is_dir():
        raise DataError(f"{path} is a folder; give the path of an .h5ad file")
    with open(path, "rb") as fh:
        if fh.read(8) != _HDF5_SIGNATURE:
            raise DataError(f"{path.name} is not an .h5ad (HDF5) file; export it with adata.write_h5ad()")
    check_h5ad(path, path.name, backed=backed)  # headers only, before anndata allocates anything
    try:
        if backed and lazy_layers and not _has_raw(path):
            return _read_backed(path)
        return ad.read_h5ad(path, backed="r" if backed else None)
    except Exception as err:
        raise DataError(f"{path.name} could not be read as .h5ad ({_short(err)}); the file may be truncated") from err


_SPARSE_ENCODINGS = ("csr_matrix", "csc_matrix")


def _has_raw(path: Path) -> bool:
    import h5py

    with h5py.File(path, "r") as handle:
        return "raw" in handle


def _read_backed(path: Path) -> ad.AnnData:
    """Backed AnnData whose X *and* sparse layers stay on disk; obs, var, obsm, uns... in memory.

    anndata's own backed mode reads every layer into memory: for a 100,000-cell file with spliced and
    unspliced counts that is 1.7 GB and most of the seconds it takes to open, while the app's pages draw
    from obs and obsm. A layer is read when used (``adata.to_memory()``, or a slice of it); dense layers are
    read now, as anndata does."""
    import h5py
    from anndata.io import read_elem, sparse_dataset

    handle = h5py.File(path, "r")  # kept open by the layers' datasets for as long as the AnnData lives
    parts = {key: read_elem(handle[key]) for key in handle.keys() if key not in ("X", "layers")}
    layers = {}
    for key, group in handle["layers"].items() if "layers" in handle else ():
        encoding = group.attrs.get("encoding-type")
        layers[key] = sparse_dataset(group) if encoding in _SPARSE_ENCODINGS else read_elem(group)
    return ad.AnnData(**parts, layers=layers, filename=path, filemode="r")


def _short(err: Exception) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:160]
