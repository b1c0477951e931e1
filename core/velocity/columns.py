"""Columns of a dense cells x genes array, gathered genes-by-cells.

numpy's ``m[:, genes].T`` copied into C order reads each of the n rows for every block and then transposes with
a stride of the block's width: at 100,000 cells and 64 genes it took 136 ms a block, half of the stochastic fit's
time. Walking tiles of cells, a tile's rows stay in cache while every gene of the block is written: 23 ms. The
values are copies, so everything computed from them keeps its bits.
"""

from __future__ import annotations

import numba
import numpy as np

from core.velocity.threads import each_on_threads, ranges

_TILE = 128  # cells whose rows are read before the next tile's: 128 rows of 2,000 genes are 1 MB of float32


@numba.njit(cache=True, nogil=True)
def _gather(m, genes, out, first, last):  # pragma: no cover (compiled)
    for c0 in range(first, last, _TILE):
        c1 = min(c0 + _TILE, last)
        for j in range(len(genes)):
            g = genes[j]
            for c in range(c0, c1):
                out[j, c] = m[c, g]


def gene_rows(m: np.ndarray, genes: np.ndarray) -> np.ndarray:
    """[len(genes), n] float32, C order: ``np.ascontiguousarray(m[:, genes].T, dtype=np.float32)``, on the calling
    thread only (callers already run blocks side by side). ``m`` [n, g]: C-ordered float32 takes the kernel."""
    genes = np.ascontiguousarray(genes, dtype=np.int64)
    if not _c_float32(m):
        return np.ascontiguousarray(m[:, genes].T, dtype=np.float32)
    out = np.empty((len(genes), m.shape[0]), dtype=np.float32)
    _gather(m, genes, out, 0, m.shape[0])
    return out


def columns(m: np.ndarray, genes: np.ndarray) -> np.ndarray:
    """[n, len(genes)]: ``m[:, genes]`` (integer positions or a boolean mask) with its values and its layout
    (Fortran order, as numpy returns a column selection), the cells split between the threads."""
    genes = np.flatnonzero(genes) if np.asarray(genes).dtype == bool else np.asarray(genes, dtype=np.int64)
    if not _c_float32(m):
        return m[:, genes]
    out = np.empty((len(genes), m.shape[0]), dtype=np.float32)
    each_on_threads(lambda part: _gather(m, genes, out, *part), ranges(m.shape[0]))
    return out.T


def _c_float32(m) -> bool:
    # anything else (another dtype or layout, a view) takes numpy's own selection: the same values, slower
    return isinstance(m, np.ndarray) and m.dtype == np.float32 and m.flags.c_contiguous
