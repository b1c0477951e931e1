"""The embedded demo: a synthetic mouse skin wound data set (burn vs sham) with a known truth, and a companion
pretraining atlas of the same cell types under other perturbations, in the same latent space.

Everything is generated from a seed in well under a minute and cached as .h5ad in ``data/cache/`` (or
``$ST_DATA_CACHE``). ``data/README.md`` documents every key; in short, the burn/sham file looks like a real
one: obs ``condition`` (sham/burn), ``cell_types_simple_short``, ``mouse_id``; raw counts in
``layers["spliced"]``/``layers["unspliced"]``; log-normalised ``X``; the latent embedding ``obsm["X_pca"]``
(50-d PCA, the space the model works in) and ``obsm["X_umap"]``; and the truth: ``obs["true_latent_time"]``,
``obsm["true_velocity_pca"]`` (dz/dt in latent units), ``uns["true_burn_effect"]`` (cell type -> latent shift),
``obsm["true_burn_effect_pca"]`` (per cell: the noise-free latent shift burn causes, or would cause, in that
cell), ``obs["true_burn_response"]`` (how strongly the cell responds, 0 to 1) and ``obs["true_sham_time"]``.

How the counts arise (core/data/kinetics.py): each cell type follows its own lineage in latent time t; its
program genes are induced then repressed with transcription-splicing-degradation kinetics, so spliced and
unspliced counts carry a velocity that scvelo can recover. Every gene also has a constant baseline in steady
state (zero velocity). Burn depends on the cell's state, as wound responses do: per cell type, only part of
the trajectory responds (a logistic switch in latent time at a type-specific onset, late cells in some types,
early ones in others; ``burn_response``). A cell with response r advances along its lineage by
r x ``BURN_TIME_SHIFT`` (the part aligned with velocity) and has a shared wound-response gene set raised by
1 + r (``WOUND_FOLD`` - 1) (a shift that velocity knows nothing about). Within a cell type the effect is
therefore not one shift, nor an affine map of the sham state by construction. ``uns["demo"]`` states the
response model and how much of the effect velocity can explain, per cell type (see ``_burn_truth``). Mice
differ by a per-mouse factor on baselines and on sequencing depth (mouse is nested in condition, as in a real
experiment).

The latent space: X = log1p(spliced counts per 10k); z = (X - var["pca_mean"]) @ varm["PCs"], 50 components,
the same map for the burn/sham data and the atlas, so a base model pretrained on the atlas works on burn/sham.

Memory: every cells x genes quantity (expected abundances, Poisson rates, log counts) is computed for a chunk of
cells at a time (CHUNK_ELEMENTS values; the default demo is one chunk, 100,008 x 2,000 is 17) and recomputed
in each pass that needs it rather than stored; only the counts (int32 CSR) and X (float32) are kept whole, so
100,008 x 2,000 peaks at 3.7 GB where one pass over dense float64 arrays needed more than 19 GB. The values are
those of one pass: numpy's Generator draws an array element by element in C order, so drawing row chunks in
sequence gives the same numbers as one draw, provided the passes keep the order of the draws (all spliced
counts, then all unspliced; in the truth, the burnt states' spliced then unspliced counts, then the sham
states'). Whole-data quantities come first, summed over chunks: the depth scale (mean expected spliced total),
the PCA mean, then the covariance (sum of centred chunk.T @ chunk). With one chunk every number is what one
pass gives; with several, the counts and X are identical and the floats differ by the order of those sums
(at 40,008 x 2,000, 18 of the 2 M values of obsm["X_pca"] differ, by one float32 rounding step).
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from core.data.kinetics import spliced_velocity, unspliced_spliced
from core.io.atomic import atomic_write_with
from core.paths import cache_dir

CELL_TYPES = ["Basal_KC", "Diff_KC", "Fibroblast", "Macrophage", "Neutrophil", "Endothelial"]
SEED = 20261124
N_GENES = 1000
CELLS_PER_GROUP = 1000  # per cell type and condition: 12,000 cells
MICE_PER_CONDITION = 4
N_COMPS = 50
T_MAX = 8.0
BURN_TIME_SHIFT = 1.5  # the largest advance along the lineage, for a cell that responds fully
RESPONSE_WIDTH = 0.5  # latent time over which a cell type's response switches on (logistic scale)
PROGRAM_GENES = 150
WOUND_GENES = 60
WOUND_FOLD = 3.0
TARGET_DEPTH = 4000.0  # mean spliced counts per cell
ATLAS_PERTURBATIONS = 12
ATLAS_CELLS_PER_GROUP = 120
ATLAS_BATCHES = 3
CACHE_VERSION = "v4"
NAMES = ("burn_sham", "atlas")
# cells x genes values per chunk of cells: the default demo (12,000 x 1,000) is one chunk, 100,000 x 2,000 is 17
CHUNK_ELEMENTS = 12_000_000
BLOCK_ELEMENTS = 500_000  # values per block of the kinetics within a chunk (see _in_blocks)


def demo_path(name: str = "burn_sham") -> Path:
    """Where the cached demo file ``name`` ('burn_sham' or 'atlas') lives (it may not exist yet)."""
    if name not in NAMES:
        raise ValueError(f"demo name must be 'burn_sham' or 'atlas'; got {name!r}")
    return cache_dir() / f"demo_{name}_{CACHE_VERSION}.h5ad"


class _World:
    """Gene-level parameters shared by the burn/sham data and the atlas (one biology, two experiments)."""

    def __init__(self, rng: np.random.Generator, n_genes: int):
        g = self.n_genes = n_genes
        self.beta = rng.uniform(0.8, 1.6, g)
        self.gamma = self.beta * rng.uniform(0.25, 0.6, g)  # gamma < beta, never equal
        self.alpha_base = rng.lognormal(np.log(0.15), 0.8, g)
        self.alpha_on = np.zeros((len(CELL_TYPES), g))
        self.t_switch = np.full((len(CELL_TYPES), g), T_MAX)
        for k in range(len(CELL_TYPES)):
            program = rng.choice(g, PROGRAM_GENES, replace=False)
            self.alpha_on[k, program] = rng.lognormal(np.log(2.0), 0.6, PROGRAM_GENES)
            self.t_switch[k, program] = rng.uniform(0.3, 0.9, PROGRAM_GENES) * T_MAX
        # type identity: a marker baseline per type so types separate in the embedding
        self.type_fold = np.ones((len(CELL_TYPES), g))
        for k in range(len(CELL_TYPES)):
            markers = rng.choice(g, 40, replace=False)
            self.type_fold[k, markers] = rng.uniform(3.0, 8.0, 40)
        self.wound_genes = rng.choice(g, WOUND_GENES, replace=False)
        self.wound_fold = np.ones(g)
        self.wound_fold[self.wound_genes] = WOUND_FOLD

    def expected(self, type_idx, t, base_fold):
        """Expected (u, s) [n, g] for cells of types type_idx [n] at times t [n] with baseline folds [n, g]."""
        alpha_base = self.alpha_base * self.type_fold[type_idx] * base_fold
        u_base, s_base = alpha_base / self.beta, alpha_base / self.gamma  # steady state: no velocity
        u, s = unspliced_spliced(t[:, None], self.alpha_on[type_idx], self.beta, self.gamma, self.t_switch[type_idx])
        return u + u_base, s + s_base


def _chunks(n: int, g: int, chunk_elements: int) -> list[slice]:
    """Consecutive slices of at most chunk_elements // g rows (at least one row) covering range(n)."""
    step = max(1, chunk_elements // g)
    return [slice(lo, min(lo + step, n)) for lo in range(0, n, step)]


class _LastChunk:
    """fn(k) for chunk k, keeping the last result: with a single chunk every pass over it computes it once."""

    def __init__(self, fn):
        self.fn, self.key, self.value = fn, None, None

    def __call__(self, k: int):
        if k != self.key:
            self.key = self.value = None  # free the previous chunk before computing the next
            self.value, self.key = self.fn(k), k
        return self.value


def _in_blocks(n: int, g: int, expected) -> tuple[np.ndarray, np.ndarray]:
    """(u, s) [n, g] from ``expected(block)`` over blocks of BLOCK_ELEMENTS values: the same numbers as one call
    (the kinetics are elementwise), but its dozens of temporaries stay small enough for malloc to reuse, where
    full-size ones would be fresh pages, faulted in and zeroed, every time (half the build time at 100k cells)."""
    u, s = np.empty((n, g)), np.empty((n, g))
    for block in _chunks(n, g, BLOCK_ELEMENTS):
        u[block], s[block] = expected(block)
    return u, s


def _latent_velocity(world: _World, u: np.ndarray, s: np.ndarray, pcs: np.ndarray) -> np.ndarray:
    """The true velocity in latent units of cells with expected (u, s): z = (log1p(kappa s) - mean) W, so
    dz/dt = (kappa ds/dt / (1 + kappa s)) W, with kappa the cell's expected normalisation (depth changes along
    time are second order and ignored)."""
    kappa = (1e4 / s.sum(1))[:, None]
    return (kappa * spliced_velocity(u, s, world.beta, world.gamma) / (1 + kappa * s)) @ pcs


def _log_normalise(s: np.ndarray) -> np.ndarray:
    """log1p of counts per 10k, the usual scanpy normalisation (normalize_total(1e4) + log1p)."""
    return np.log1p(s * (1e4 / np.maximum(s.sum(1), 1.0))[:, None])


def _log_counts(counts) -> np.ndarray:
    """_log_normalise of integer counts (dense or a CSR block of rows), in float64."""
    dense = counts.toarray() if sp.issparse(counts) else counts
    return _log_normalise(dense.astype(np.float64))


def _depth_scale(s_row_sums: np.ndarray) -> float:
    """Molecules per unit of expected abundance, so that cells average TARGET_DEPTH spliced counts."""
    return TARGET_DEPTH / s_row_sums.mean()


def _poisson(rng, expected: np.ndarray, scale: float, depth_factor: np.ndarray) -> np.ndarray:
    return rng.poisson(expected * scale * depth_factor[:, None]).astype(np.int32)


def _stack(blocks: list) -> sp.csr_matrix:
    return blocks[0] if len(blocks) == 1 else sp.vstack(blocks, format="csr")


def _principal_axes(cov: np.ndarray, n_comps: int) -> tuple[np.ndarray, np.ndarray]:
    """(loadings [g, c], explained variance ratio [c]) by eigendecomposition of the g x g covariance: exact
    like a full SVD of the cells x genes matrix but about 20x faster for g << n, and it needs only the
    covariance, which is summed over chunks of cells. Signs are fixed (largest loading positive) so that a
    seed always gives the same axes."""
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1][:n_comps]
    pcs = eigvec[:, order]
    pcs *= np.sign(pcs[np.abs(pcs).argmax(0), np.arange(n_comps)])
    return pcs, eigval[order] / eigval.sum()


def _cells(rng, cells_per_group: int) -> pd.DataFrame:
    rows = []
    for k, _ in enumerate(CELL_TYPES):
        for condition in ("sham", "burn"):
            mouse = rng.integers(1, MICE_PER_CONDITION + 1, cells_per_group)
            t = rng.uniform(0, T_MAX - BURN_TIME_SHIFT, cells_per_group)
            rows.append(pd.DataFrame({"type_idx": k, "condition": condition, "mouse": mouse, "t_sham": t}))
    return pd.concat(rows, ignore_index=True)


def _response_model(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per cell type: where along latent time the burn response switches on, and in which direction
    (+1: the later part of the trajectory responds, -1: the earlier part). From its own random stream, so
    the world's genes, the cells and the atlas are drawn exactly as without it."""
    rng = np.random.default_rng([seed, 2])
    onset = rng.uniform(0.25, 0.75, len(CELL_TYPES)) * (T_MAX - BURN_TIME_SHIFT)
    direction = rng.choice([-1.0, 1.0], len(CELL_TYPES))
    return onset, direction


def burn_response(type_idx: np.ndarray, t_sham: np.ndarray, seed: int = SEED) -> np.ndarray:
    """How strongly each cell responds to burn, in [0, 1], from its type and its unburnt (sham) latent time:
    a logistic switch of width RESPONSE_WIDTH at the type's onset. A cell that responds fully advances by
    BURN_TIME_SHIFT and has its wound programme raised WOUND_FOLD-fold; one at 0 is left as it was."""
    onset, direction = _response_model(seed)
    return 1.0 / (1.0 + np.exp(-direction[type_idx] * (t_sham - onset[type_idx]) / RESPONSE_WIDTH))


def _burnt_state(world: _World, response: np.ndarray):
    """(latent time shift [n], baseline fold factor [n, g]) of cells with the given responses."""
    return response * BURN_TIME_SHIFT, 1.0 + (world.wound_fold - 1.0) * response[:, None]


class _Population:
    """The burn/sham cells' own draws (type, sham latent time, response, mouse, sequencing depth). Their
    expected abundances, burnt or sham, are n x g and recomputed for each chunk of rows that needs them
    rather than stored."""

    def __init__(self, world: _World, type_idx, t_sham, response, mouse_fold, mouse_code, depth_factor):
        self.world, self.type_idx, self.t_sham, self.response = world, type_idx, t_sham, response
        self.mouse_fold, self.mouse_code, self.depth_factor = mouse_fold, mouse_code, depth_factor

    def expected(self, rows, burnt) -> tuple[np.ndarray, np.ndarray]:
        """Expected (u, s) [rows, g] in the burnt state where ``burnt`` (bool, per row or one for all), the
        sham state elsewhere."""
        rows = np.arange(len(self.t_sham))[rows]
        burnt = np.broadcast_to(burnt, rows.shape)
        return _in_blocks(len(rows), self.world.n_genes, lambda b: self._expected(rows[b], burnt[b]))

    def _expected(self, rows, burnt):
        time_shift, wound_factor = _burnt_state(self.world, self.response[rows])
        t = self.t_sham[rows] + burnt * time_shift
        fold = self.mouse_fold[self.mouse_code[rows]] * np.where(burnt[:, None], wound_factor, 1.0)
        return self.world.expected(self.type_idx[rows], t, fold)


def _burn_sham(world: _World, rng: np.random.Generator, cells_per_group: int, seed: int,
               chunk_elements: int) -> ad.AnnData:
    cells = _cells(rng, cells_per_group)
    n, g = len(cells), world.n_genes
    type_idx = cells["type_idx"].to_numpy()
    burn = (cells["condition"] == "burn").to_numpy()
    response = burn_response(type_idx, cells["t_sham"].to_numpy(), seed)
    mouse_ids = np.where(burn, "burn_", "sham_") + cells["mouse"].astype(str).to_numpy()
    mouse_levels = sorted(set(mouse_ids))
    mouse_fold = {m: rng.lognormal(0, 0.12, g) for m in mouse_levels}
    mouse_depth = {m: rng.lognormal(0, 0.15) for m in mouse_levels}
    depth_factor = rng.lognormal(0, 0.25, n) * np.array([mouse_depth[m] for m in mouse_ids])
    population = _Population(world, type_idx, cells["t_sham"].to_numpy(), response,
                             np.stack([mouse_fold[m] for m in mouse_levels]),
                             np.searchsorted(mouse_levels, mouse_ids), depth_factor)
    t = cells["t_sham"].to_numpy() + burn * (response * BURN_TIME_SHIFT)  # _burnt_state's shift
    chunks = _chunks(n, g, chunk_elements)
    observed = _LastChunk(lambda k: population.expected(chunks[k], burn[chunks[k]]))
    scale = _depth_scale(np.concatenate([observed(k)[1].sum(1) for k in range(len(chunks))]))

    # all spliced counts, then all unspliced: chunk after chunk, the same draws as one call over all cells
    x = np.empty((n, g), np.float32)
    spliced, x_sum = [], 0.0
    for k, rows in enumerate(chunks):
        counts = _poisson(rng, observed(k)[1], scale, depth_factor[rows])
        spliced.append(sp.csr_matrix(counts))
        x_rows = _log_counts(counts)
        x[rows] = x_rows
        x_sum = x_sum + x_rows.sum(0)
    spliced = _stack(spliced)
    mean = x_sum / n
    unspliced, cov = [], 0.0
    for k, rows in enumerate(chunks):
        unspliced.append(sp.csr_matrix(_poisson(rng, observed(k)[0], scale, depth_factor[rows])))
        centred = _log_counts(spliced[rows]) - mean
        cov = cov + centred.T @ centred
    unspliced = _stack(unspliced)
    pcs, variance_ratio = _principal_axes(cov / (n - 1), N_COMPS)

    z, v_z = np.empty((n, N_COMPS)), np.empty((n, N_COMPS))
    for k, rows in enumerate(chunks):
        z[rows] = (_log_counts(spliced[rows]) - mean) @ pcs
        v_z[rows] = _latent_velocity(world, *observed(k), pcs)
    del observed

    obs = pd.DataFrame({
        "condition": pd.Categorical(cells["condition"], categories=["sham", "burn"]),
        "cell_types_simple_short": pd.Categorical(np.array(CELL_TYPES)[type_idx], categories=CELL_TYPES),
        "mouse_id": pd.Categorical(mouse_ids, categories=mouse_levels),
        "true_latent_time": t,
        "true_sham_time": cells["t_sham"].to_numpy(),
        "true_burn_response": response,
    }, index=[f"cell_{i:05d}" for i in range(n)])
    var = pd.DataFrame({"pca_mean": mean.astype(np.float32), "wound_response": world.wound_fold > 1},
                       index=[f"gene_{j:04d}" for j in range(g)])
    adata = ad.AnnData(X=x, obs=obs, var=var)
    adata.layers["spliced"] = spliced
    adata.layers["unspliced"] = unspliced
    adata.obsm["X_pca"] = z.astype(np.float32)
    adata.varm["PCs"] = pcs.astype(np.float32)
    adata.uns["pca"] = _pca_uns(variance_ratio)
    adata.obsm["true_velocity_pca"] = v_z.astype(np.float32)
    truth_rng = np.random.default_rng([seed, 1])  # a separate stream: the truth does not change the data
    effect, cell_effect, meta = _burn_truth(population, burn, scale, pcs, mean, v_z, truth_rng, chunk_elements)
    adata.uns["true_burn_effect"] = effect
    adata.obsm["true_burn_effect_pca"] = cell_effect.astype(np.float32)
    onset, direction = _response_model(seed)
    adata.uns["demo"] = {**meta, "seed": seed, "n_cells": n, "n_genes": g, "cells_per_group": cells_per_group,
                         "mice_per_condition": MICE_PER_CONDITION, "burn_time_shift": BURN_TIME_SHIFT,
                         "wound_fold": WOUND_FOLD, "wound_genes": WOUND_GENES, "t_max": T_MAX,
                         "response_onset": dict(zip(CELL_TYPES, onset.tolist())),
                         "response_direction": dict(zip(CELL_TYPES, direction.tolist())),
                         "response_width": RESPONSE_WIDTH,
                         "version": CACHE_VERSION}
    return adata


def _pca_uns(variance_ratio) -> dict:
    return {"variance_ratio": np.asarray(variance_ratio, dtype=np.float32),
            "normalisation": "log1p(spliced counts per 10k)", "mean_key": "var['pca_mean']",
            "loadings_key": "varm['PCs']"}


def _burn_truth(population: _Population, burn, scale, pcs, mean, v_z, rng, chunk_elements):
    """The true burn effect, per cell and per cell type, and how much of it velocity can explain.

    Every cell i has a sham state (its type, sham latent time, mouse factor, sequencing depth) and a burnt
    state (the same cell advanced by its response times BURN_TIME_SHIFT, its wound programme raised by its
    response): a burn cell was observed burnt, a sham cell sham. The per-cell effect (``obsm
    ["true_burn_effect_pca"]``) is the noise-free z(burnt) - z(sham) of every cell, so for a sham cell it is
    what burn would have done to it. ``true_burn_effect[type]`` is the mean over the type's burn cells of
    z(burnt) - z(sham), each z from its own fresh count draw (the expected latent shift including what
    counting noise does to log-normalised data, so it is what a burn-minus-sham mean shows up to mouse
    effects). How much velocity can explain is measured on the burn cells' noise-free shifts e_i against the
    unit true velocity v_i of the sham state, e_i = (e_i.v_i) v_i + r_i: ``burn_aligned_ratio`` = mean
    |e_i.v_i| / mean |r_i| (the part the velocity loss can use over the part it cannot) and
    ``burn_cell_alignment`` = mean cosine(e_i, v_i); ``burn_alignment`` is the cosine between the type's mean
    effect and its mean sham velocity. ``response_mean`` is the type's mean response over its burn cells.

    Chunks of cells as in ``_burn_sham``; the draws keep their order (burnt spliced, burnt unspliced, sham
    spliced, for all burn cells each).
    """
    world, type_all, response = population.world, population.type_idx, population.response
    n, g = len(type_all), world.n_genes

    def z_expected(s):
        return (np.log1p(s * (1e4 / s.sum(1))[:, None]) - mean) @ pcs

    def z_sampled(s, rows):
        return (_log_counts(_poisson(rng, s, scale, population.depth_factor[rows])) - mean) @ pcs

    cell_effect = np.empty((n, pcs.shape[1]))
    for rows in _chunks(n, g, chunk_elements):
        cell_effect[rows] = (z_expected(population.expected(rows, True)[1])
                             - z_expected(population.expected(rows, False)[1]))

    idx = np.flatnonzero(burn)
    parts = [idx[c] for c in _chunks(len(idx), g, chunk_elements)]
    burnt = _LastChunk(lambda k: population.expected(parts[k], True))
    z_burn_sampled = np.concatenate([z_sampled(burnt(k)[1], rows) for k, rows in enumerate(parts)])
    for k, rows in enumerate(parts):  # drawn and dropped, so that the sham draws below come where they did
        _poisson(rng, burnt(k)[0], scale, population.depth_factor[rows])
    del burnt
    z_sham_sampled, v_sham = [], []
    for rows in parts:  # the sham states' unspliced counts would be this stream's last draws: not drawn
        u, s = population.expected(rows, False)
        z_sham_sampled.append(z_sampled(s, rows))
        v_sham.append(_latent_velocity(world, u, s, pcs))
    z_sham_sampled, v_sham = np.concatenate(z_sham_sampled), np.concatenate(v_sham)

    type_idx = type_all[idx]
    effect_cells = cell_effect[idx]
    effect_sampled = z_burn_sampled - z_sham_sampled
    v_unit = v_sham / np.linalg.norm(v_sham, axis=1, keepdims=True)
    along = (effect_cells * v_unit).sum(1)
    across = np.linalg.norm(effect_cells - along[:, None] * v_unit, axis=1)
    cell_cos = along / np.linalg.norm(effect_cells, axis=1)
    effect, alignment, cell_alignment, ratio, response_mean = {}, {}, {}, {}, {}
    sham = ~burn
    for k, name in enumerate(CELL_TYPES):
        in_k = type_idx == k
        e = effect_sampled[in_k].mean(0)
        v = v_z[sham & (type_all == k)].mean(0)
        effect[name] = e.astype(np.float32)
        alignment[name] = float(e @ v / (np.linalg.norm(e) * np.linalg.norm(v)))
        cell_alignment[name] = float(cell_cos[in_k].mean())
        ratio[name] = float(np.abs(along[in_k]).mean() / across[in_k].mean())
        response_mean[name] = float(response[idx][in_k].mean())
    overall = float(np.abs(along).mean() / across.mean())
    return effect, cell_effect, {"burn_alignment": alignment, "burn_cell_alignment": cell_alignment,
                                 "burn_aligned_ratio": ratio, "burn_aligned_ratio_overall": overall,
                                 "response_mean": response_mean}


def _atlas(world: _World, rng: np.random.Generator, pcs: np.ndarray, mean: np.ndarray, seed: int,
           cells_per_group: int, chunk_elements: int) -> ad.AnnData:
    g = world.n_genes
    perts = ["control"] + [f"pert_{p:02d}" for p in range(1, ATLAS_PERTURBATIONS + 1)]
    time_shift = np.concatenate([[0.0], rng.uniform(-1.0, 2.0, ATLAS_PERTURBATIONS)])
    folds = [np.ones(g)]
    for _ in range(ATLAS_PERTURBATIONS):
        f = np.ones(g)
        genes = rng.choice(g, 40, replace=False)
        f[genes] = rng.choice([0.3, 3.0], 40) * rng.uniform(0.7, 1.3, 40)
        folds.append(f)
    folds = np.stack(folds)
    rows = []
    for k in range(len(CELL_TYPES)):
        for p in range(len(perts)):
            rows.append(pd.DataFrame({"type_idx": k, "pert_idx": p,
                                      "batch": rng.integers(1, ATLAS_BATCHES + 1, cells_per_group)}))
    cells = pd.concat(rows, ignore_index=True)
    n = len(cells)
    type_idx, pert_idx = cells["type_idx"].to_numpy(), cells["pert_idx"].to_numpy()
    t = np.clip(rng.uniform(0, T_MAX - 2.0, n) + time_shift[pert_idx], 0, T_MAX)
    depth_factor = rng.lognormal(0, 0.25, n)
    chunks = _chunks(n, g, chunk_elements)
    def spliced_expected_of(k):
        rows = np.arange(n)[chunks[k]]
        return _in_blocks(len(rows), g, lambda b: world.expected(type_idx[rows[b]], t[rows[b]],
                                                                 folds[pert_idx[rows[b]]]))[1]

    spliced_expected = _LastChunk(spliced_expected_of)
    scale = _depth_scale(np.concatenate([spliced_expected(k).sum(1) for k in range(len(chunks))]))
    # spliced counts only: unspliced ones would be the last draws of the generator's stream, and unused
    x, z = np.empty((n, g), np.float32), np.empty((n, pcs.shape[1]), np.float32)
    for k, rows in enumerate(chunks):
        x_rows = _log_counts(_poisson(rng, spliced_expected(k), scale, depth_factor[rows]))
        x[rows] = x_rows
        z[rows] = (x_rows - mean) @ pcs
    obs = pd.DataFrame({
        "perturbation": pd.Categorical(np.array(perts)[pert_idx], categories=perts),
        "cell_types_simple_short": pd.Categorical(np.array(CELL_TYPES)[type_idx], categories=CELL_TYPES),
        "batch": pd.Categorical("plate_" + cells["batch"].astype(str)),
    }, index=[f"atlas_{i:05d}" for i in range(n)])
    adata = ad.AnnData(X=x, obs=obs, var=pd.DataFrame({"pca_mean": mean.astype(np.float32)},
                                                      index=[f"gene_{j:04d}" for j in range(g)]))
    adata.obsm["X_pca"] = z
    adata.varm["PCs"] = pcs.astype(np.float32)
    adata.uns["demo"] = {"seed": seed, "time_shift": dict(zip(perts, time_shift.tolist())),
                         "genes_per_perturbation": 40, "version": CACHE_VERSION}
    return adata


def _add_umap(adata: ad.AnnData, seed: int) -> None:
    import scanpy as sc

    # exact neighbours: pynndescent 0.7 fails on csr_array at >= 4,096 cells (FIELD_NOTES)
    sc.pp.neighbors(adata, n_neighbors=15, use_rep="X_pca", transformer="sklearn", random_state=seed % 2**32)
    sc.tl.umap(adata, random_state=seed % 2**32)
    # the graph was only needed for the UMAP; velocity builds its own, and it would double the file size
    del adata.obsp["connectivities"], adata.obsp["distances"], adata.uns["neighbors"]


def generate(seed: int = SEED, cells_per_group: int = CELLS_PER_GROUP, n_genes: int = N_GENES,
             atlas_cells_per_group: int = ATLAS_CELLS_PER_GROUP, umap: bool = True,
             chunk_elements: int = CHUNK_ELEMENTS) -> tuple[ad.AnnData, ad.AnnData]:
    """Build (burn_sham, atlas) from ``seed``; the same arguments give the same data.

    ``cells_per_group`` is per cell type and condition (6 types x 2 conditions), ``atlas_cells_per_group``
    per cell type and perturbation (6 x 13); the defaults make the cached demo (12,000 x 1,000 and 9,360 x
    1,000). Other sizes are for benchmarks (bench/bench_velocity.py, bench/bench_scale.py) and quick tests.
    ``chunk_elements`` bounds the cells x genes values computed at once (memory); it leaves the counts and X as
    they are and the other floats to the order of sums (module docstring).
    """
    rng = np.random.default_rng(seed)
    world = _World(rng, n_genes)
    burn_sham = _burn_sham(world, rng, cells_per_group, seed, chunk_elements)
    atlas = _atlas(world, rng, burn_sham.varm["PCs"].astype(np.float64),
                   burn_sham.var["pca_mean"].to_numpy().astype(np.float64), seed, atlas_cells_per_group,
                   chunk_elements)
    atlas.uns["pca"] = burn_sham.uns["pca"]
    if umap:
        _add_umap(burn_sham, seed)
    return burn_sham, atlas


def ensure_demo(force: bool = False) -> dict[str, Path]:
    """Generate the demo files once; later calls return their paths at once."""
    paths = {name: demo_path(name) for name in NAMES}
    if force or not all(p.exists() for p in paths.values()):
        burn_sham, atlas = generate()
        for name, adata in (("burn_sham", burn_sham), ("atlas", atlas)):
            atomic_write_with(paths[name], adata.write_h5ad)  # never a half-written cache file under the real name
        _remove_older_versions(paths)
    return paths


def _remove_older_versions(current: dict[str, Path]) -> None:
    """Earlier demo versions are never read again; they would only hold ~200 MB of the user's disk."""
    keep = set(current.values())
    for name in NAMES:
        for old in cache_dir().glob(f"demo_{name}_v*.h5ad"):
            if old not in keep:
                old.unlink(missing_ok=True)


def load_demo(name: str = "burn_sham", with_velocity: bool = False) -> ad.AnnData:
    """The demo as an AnnData, generated on first use (about 30 s) and read from the cache afterwards.

    ``with_velocity`` (burn_sham only) adds scvelo's RNA velocity in the latent space through
    ``core.velocity.compute_velocity`` (its keys: ``obsm["velocity_pca"]``, ``obsm["velocity_pca_scvelo"]``,
    ``obs["velocity_confidence"]``, ``layers["velocity"]``), computed once and cached.
    """
    path = demo_path(name)
    if with_velocity and name != "burn_sham":
        raise ValueError("velocity is available for the burn_sham demo only (the atlas has no spliced counts)")
    ensure_demo()
    adata = ad.read_h5ad(path)
    if with_velocity:
        from core.velocity.pipeline import compute_velocity

        compute_velocity(adata, basis="pca")
    return adata
