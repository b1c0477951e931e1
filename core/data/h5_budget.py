"""Look inside an .h5ad before anndata reads it: is it an AnnData file at all, and does what it declares fit
in memory (issue 12, points 3 and 16).

HDF5 stores a dataset's shape and dtype in its header; the data can be absent (never written chunks read as
zeros), so a 1.4 MB file can declare 1200 x 450,000 float32 and make a plain read allocate 2.2 GB. Here every
dataset's declared shape x item size is summed, without reading any data, and checked against the memory
budget (core/memory_budget.py). In backed mode X stays on disk, so X is not counted.

Files that are HDF5 but not AnnData (loom, 10x Genomics .h5, an empty file) get their own one-line message
instead of anndata's "may be truncated"; a file with an external link (into another HDF5 file, possibly
outside the data roots) is refused.
"""

from __future__ import annotations

from core.errors import DataError
from core.memory_budget import how_to_raise, human, memory_budget

# Walking millions of header objects costs time even without data: a real .h5ad has a few hundred.
MAX_OBJECTS = 200_000
# h5py reports variable-length strings with the size of a pointer; count them as at least this many bytes
# (anndata turns them into Python strings of ~50 bytes each).
MIN_STRING_BYTES = 50


def _not_anndata(keys: list[str], name: str) -> DataError | None:
    if "obs" in keys and "var" in keys:
        return None
    if not keys:
        return DataError(f"{name} is an empty HDF5 file (no groups at all); export the data with adata.write_h5ad()")
    if "matrix" in keys:
        return DataError(f"{name} looks like a 10x Genomics .h5 file (a 'matrix' group, no obs/var); read it with "
                         "scanpy.read_10x_h5() and save it with adata.write_h5ad()")
    if {"row_attrs", "col_attrs"} & set(keys):
        return DataError(f"{name} looks like a loom file (row_attrs/col_attrs); read it with scanpy.read_loom() and "
                         "save it with adata.write_h5ad()")
    shown = ", ".join(repr(k[:40]) for k in keys[:5]) + (", ..." if len(keys) > 5 else "")
    return DataError(f"{name} is an HDF5 file but not an AnnData .h5ad (no obs and var groups; it has {shown}); "
                     "export the data with adata.write_h5ad()")


def declared_bytes(handle, backed: bool = False) -> int:
    """Sum of shape x item size over every dataset in the open h5py file ``handle`` (X skipped when
    ``backed``); DataError past ``MAX_OBJECTS`` objects."""
    import h5py

    total, seen = 0, 0

    def visit(path: str, obj):
        nonlocal total, seen
        seen += 1
        if seen > MAX_OBJECTS:
            raise DataError(f"the file holds more than {MAX_OBJECTS:,} HDF5 objects; an .h5ad has a few hundred")
        if not isinstance(obj, h5py.Dataset):
            return None
        if backed and (path == "X" or path.startswith("X/")):
            return None
        itemsize = obj.dtype.itemsize
        if obj.dtype.kind in ("O", "S", "U") or h5py.check_string_dtype(obj.dtype) is not None:
            itemsize = max(itemsize, MIN_STRING_BYTES)
        total += int(obj.size or 0) * itemsize
        return None

    handle.visititems(visit)
    return total


def external_link(handle) -> str | None:
    """The path (inside the file) of the first link to another file, or None. anndata never writes them; a
    crafted file uses one to make us read an HDF5 file anywhere on the server (outside the data roots)."""
    import h5py

    found = []

    def visit(path: str, link):
        if isinstance(link, h5py.ExternalLink):
            found.append(path)
            return True
        return None

    handle.visititems_links(visit)
    return found[0] if found else None


def check_h5ad(source, name: str, backed: bool = False) -> None:
    """DataError (one line) if ``source`` (a path or a binary file object) is HDF5 but not AnnData, or declares
    more data than the memory budget; reads headers only. Files h5py cannot open are left to the reader."""
    import h5py

    try:
        handle = h5py.File(source, "r")
    except Exception:  # not openable: anndata's read gives the truncated/damaged message
        return
    with handle:
        error = _not_anndata(list(handle.keys()), name)
        if error is not None:
            raise error
        link = external_link(handle)
        if link is not None:
            raise DataError(f"{name} links to another file at '{link[:80]}' (an HDF5 external link); an .h5ad must "
                            "hold its own data: save a self-contained copy with adata.write_h5ad()")
        need = declared_bytes(handle, backed)
    budget = memory_budget()
    if need > budget:
        raise DataError(f"{name} declares {human(need)} of arrays, more than the memory budget of {human(budget)}; "
                        f"nothing was read. Check the file (a dataset may declare a shape it does not hold), "
                        f"or {how_to_raise()}")
