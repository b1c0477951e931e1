"""The embedded demo: a synthetic mouse skin wound data set (burn vs sham) with a known truth, and a companion
pretraining atlas of the same cell types under other perturbations, in the same latent space.

Everything is generated from a seed in well under a minute and cached as .h5ad in ``data/cache/`` (or
``$ST_DATA_CACHE``). ``data/README.md`` documents every key; in short, the burn/sham file looks like a real
one: obs ``condition`` (sham/burn), ``cell_types_simple_short``, ``mouse_id``; raw counts in
``layers["spliced"]``/``layers["unspliced"]``; log-normalised ``X``; the latent embedding ``obsm["X_pca"]``
(50-d PCA, the space the model works in) and ``obsm["X_umap"]``; and the truth: ``obs["true_latent_time"]``,
``obsm["true_velocity_pca"]`` (dz/dt in latent units), ``uns["true_burn_effect"]`` (cell type -> latent shift).

How the counts arise (core/data/kinetics.py): each cell type follows its own lineage in latent time t; its
program genes are induced then repressed with transcription-splicing-degradation kinetics, so spliced and
unspliced counts carry a velocity that scvelo can recover. Every gene also has a constant baseline in steady
state (zero velocity). Burn does two things: it advances each cell along its lineage by ``BURN_TIME_SHIFT``
(the part aligned with velocity), and it raises the baseline of a shared wound-response gene set (a shift
that velocity knows nothing about). ``uns["demo"]["burn_alignment"]`` gives, per cell type, the cosine
between the true burn effect and the mean true velocity: the share of the effect velocity can explain.
Mice differ by a per-mouse factor on baselines and on sequencing depth (mouse is nested in condition).
"""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from core.data.kinetics import spliced_velocity, unspliced_spliced

CELL_TYPES = ["Basal_KC", "Diff_KC", "Fibroblast", "Macrophage", "Neutrophil", "Endothelial"]
SEED = 20261124
N_GENES = 1000
CELLS_PER_GROUP = 1000  # per cell type and condition: 12,000 cells
MICE_PER_CONDITION = 4
N_COMPS = 50
T_MAX = 8.0
BURN_TIME_SHIFT = 1.5
PROGRAM_GENES = 150
WOUND_GENES = 60
WOUND_FOLD = 3.0
TARGET_DEPTH = 4000.0  # mean spliced counts per cell
ATLAS_PERTURBATIONS = 12
ATLAS_CELLS_PER_GROUP = 120
ATLAS_BATCHES = 3
CACHE_VERSION = "v1"


def cache_dir() -> Path:
    root = os.environ.get("ST_DATA_CACHE")
    return Path(root) if root else Path(__file__).resolve().parents[2] / "data" / "cache"


def demo_path(name: str = "burn_sham") -> Path:
    if name not in ("burn_sham", "atlas"):
        raise ValueError(f"demo name must be 'burn_sham' or 'atlas'; got {name!r}")
    return cache_dir() / f"demo_{name}_{CACHE_VERSION}.h5ad"


class _World:
    """Gene-level parameters shared by the burn/sham data and the atlas (one biology, two experiments)."""

    def __init__(self, rng: np.random.Generator):
        g = N_GENES
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

    def expected(self, type_idx, t, base_fold):
        """Expected (u, s) [n, g] for cells of types type_idx [n] at times t [n] with baseline folds [n, g]."""
        alpha_base = self.alpha_base * self.type_fold[type_idx] * base_fold
        u_base, s_base = alpha_base / self.beta, alpha_base / self.gamma  # steady state: no velocity
        u, s = unspliced_spliced(t[:, None], self.alpha_on[type_idx], self.beta, self.gamma, self.t_switch[type_idx])
        return u + u_base, s + s_base


def _log_normalise(s: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log1p of counts per 10k; also returns the scale kappa so that x = log1p(kappa s)."""
    kappa = 1e4 / np.maximum(depth, 1.0)
    return np.log1p(s * kappa[:, None]), kappa


def _sample_counts(rng, u, s, depth_factor):
    scale = TARGET_DEPTH / s.sum(1).mean()
    lam_s, lam_u = s * scale * depth_factor[:, None], u * scale * depth_factor[:, None]
    return rng.poisson(lam_s).astype(np.int32), rng.poisson(lam_u).astype(np.int32)


def _burn_sham(world: _World, rng: np.random.Generator, cells_per_group: int = CELLS_PER_GROUP) -> ad.AnnData:
    rows = []
    for k, _ in enumerate(CELL_TYPES):
        for condition in ("sham", "burn"):
            mouse = rng.integers(1, MICE_PER_CONDITION + 1, cells_per_group)
            t = rng.uniform(0, T_MAX - BURN_TIME_SHIFT, cells_per_group)
            rows.append(pd.DataFrame({"type_idx": k, "condition": condition, "mouse": mouse, "t_sham": t}))
    cells = pd.concat(rows, ignore_index=True)
    n = len(cells)
    type_idx = cells["type_idx"].to_numpy()
    burn = (cells["condition"] == "burn").to_numpy()
    mouse_ids = np.where(burn, "burn_", "sham_") + cells["mouse"].astype(str).to_numpy()
    mouse_levels = sorted(set(mouse_ids))
    mouse_fold = {m: rng.lognormal(0, 0.12, N_GENES) for m in mouse_levels}
    mouse_depth = {m: rng.lognormal(0, 0.15) for m in mouse_levels}
    base_fold = np.stack([mouse_fold[m] for m in mouse_ids])
    wound = np.ones(N_GENES)
    wound[world.wound_genes] = WOUND_FOLD
    t = cells["t_sham"].to_numpy() + burn * BURN_TIME_SHIFT
    u, s = world.expected(type_idx, t, base_fold * np.where(burn[:, None], wound, 1.0))
    depth_factor = rng.lognormal(0, 0.25, n) * np.array([mouse_depth[m] for m in mouse_ids])
    spliced, unspliced = _sample_counts(rng, u, s, depth_factor)

    x, _ = _log_normalise(spliced.astype(np.float64), spliced.sum(1))
    mean = x.mean(0)
    # PCA by SVD of the centred data; sign fixed so the largest loading of each component is positive
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    pcs = vt[:N_COMPS].T
    pcs *= np.sign(pcs[np.abs(pcs).argmax(0), np.arange(N_COMPS)])
    z = (x - mean) @ pcs

    # truth in latent units: z = (log1p(kappa s) - mean) W, so dz/dt = (kappa ds/dt / (1 + kappa s)) W,
    # with kappa the cell's expected normalisation (depth changes along time are second order and ignored)
    kappa_expected = 1e4 / s.sum(1)
    ds_dt = spliced_velocity(u, s, world.beta, world.gamma)
    v_z = (kappa_expected[:, None] * ds_dt / (1 + kappa_expected[:, None] * s)) @ pcs

    obs = pd.DataFrame({
        "condition": pd.Categorical(cells["condition"], categories=["sham", "burn"]),
        "cell_types_simple_short": pd.Categorical(np.array(CELL_TYPES)[type_idx], categories=CELL_TYPES),
        "mouse_id": pd.Categorical(mouse_ids, categories=mouse_levels),
        "true_latent_time": t,
    }, index=[f"cell_{i:05d}" for i in range(n)])
    var = pd.DataFrame({"pca_mean": mean, "wound_response": np.isin(np.arange(N_GENES), world.wound_genes)},
                       index=[f"gene_{g:04d}" for g in range(N_GENES)])
    adata = ad.AnnData(X=sp.csr_matrix(x.astype(np.float32)), obs=obs, var=var)
    adata.layers["spliced"] = sp.csr_matrix(spliced)
    adata.layers["unspliced"] = sp.csr_matrix(unspliced)
    adata.obsm["X_pca"] = z.astype(np.float32)
    adata.varm["PCs"] = pcs.astype(np.float32)
    adata.obsm["true_velocity_pca"] = v_z.astype(np.float32)
    adata.uns["true_burn_effect"], adata.uns["demo"] = _burn_truth(world, cells, burn, base_fold, pcs, mean, v_z)
    return adata


def _burn_truth(world, cells, burn, base_fold, pcs, mean, v_z):
    """Per cell type: the mean latent shift of burn cells against their own sham counterfactual (same cell,
    same mouse factor, no time shift, no wound program), free of counting noise."""
    idx = np.flatnonzero(burn)
    type_idx = cells["type_idx"].to_numpy()[idx]
    t_sham = cells["t_sham"].to_numpy()[idx]
    wound = np.ones(N_GENES)
    wound[world.wound_genes] = WOUND_FOLD

    def latent(t, fold):
        _, s = world.expected(type_idx, t, fold)
        return (np.log1p(s * (1e4 / s.sum(1))[:, None]) - mean) @ pcs

    effect_cells = latent(t_sham + BURN_TIME_SHIFT, base_fold[idx] * wound) - latent(t_sham, base_fold[idx])
    effect, alignment = {}, {}
    sham = ~burn
    for k, name in enumerate(CELL_TYPES):
        e = effect_cells[type_idx == k].mean(0)
        v = v_z[sham & (cells["type_idx"].to_numpy() == k)].mean(0)
        effect[name] = e.astype(np.float32)
        alignment[name] = float(e @ v / (np.linalg.norm(e) * np.linalg.norm(v)))
    meta = {"seed": SEED, "n_genes": N_GENES, "cells_per_group": CELLS_PER_GROUP, "burn_time_shift": BURN_TIME_SHIFT,
            "wound_fold": WOUND_FOLD, "burn_alignment": alignment, "version": CACHE_VERSION}
    return effect, meta


def _atlas(world: _World, rng: np.random.Generator, pcs: np.ndarray, mean: np.ndarray) -> ad.AnnData:
    perts = ["control"] + [f"pert_{p:02d}" for p in range(1, ATLAS_PERTURBATIONS + 1)]
    time_shift = np.concatenate([[0.0], rng.uniform(-1.0, 2.0, ATLAS_PERTURBATIONS)])
    folds = [np.ones(N_GENES)]
    for _ in range(ATLAS_PERTURBATIONS):
        f = np.ones(N_GENES)
        genes = rng.choice(N_GENES, 40, replace=False)
        f[genes] = rng.choice([0.3, 3.0], 40) * rng.uniform(0.7, 1.3, 40)
        folds.append(f)
    rows = []
    for k in range(len(CELL_TYPES)):
        for p in range(len(perts)):
            rows.append(pd.DataFrame({"type_idx": k, "pert_idx": p,
                                      "batch": rng.integers(1, ATLAS_BATCHES + 1, ATLAS_CELLS_PER_GROUP)}))
    cells = pd.concat(rows, ignore_index=True)
    type_idx, pert_idx = cells["type_idx"].to_numpy(), cells["pert_idx"].to_numpy()
    t = np.clip(rng.uniform(0, T_MAX - 2.0, len(cells)) + time_shift[pert_idx], 0, T_MAX)
    u, s = world.expected(type_idx, t, np.stack(folds)[pert_idx])
    spliced, _ = _sample_counts(rng, u, s, rng.lognormal(0, 0.25, len(cells)))
    x, _ = _log_normalise(spliced.astype(np.float64), spliced.sum(1))
    obs = pd.DataFrame({
        "perturbation": pd.Categorical(np.array(perts)[pert_idx], categories=perts),
        "cell_types_simple_short": pd.Categorical(np.array(CELL_TYPES)[type_idx], categories=CELL_TYPES),
        "batch": pd.Categorical("plate_" + cells["batch"].astype(str)),
    }, index=[f"atlas_{i:05d}" for i in range(len(cells))])
    adata = ad.AnnData(X=sp.csr_matrix(x.astype(np.float32)), obs=obs,
                       var=pd.DataFrame(index=[f"gene_{g:04d}" for g in range(N_GENES)]))
    adata.obsm["X_pca"] = ((x - mean) @ pcs).astype(np.float32)
    adata.uns["demo"] = {"seed": SEED, "time_shift": dict(zip(perts, time_shift.tolist())), "version": CACHE_VERSION}
    return adata


def _add_umap(adata: ad.AnnData, seed: int) -> None:
    import scanpy as sc

    # exact neighbours: pynndescent 0.7 fails on csr_array at >= 4,096 cells (FIELD_NOTES)
    sc.pp.neighbors(adata, n_neighbors=15, use_rep="X_pca", transformer="sklearn", random_state=seed)
    sc.tl.umap(adata, random_state=seed)


def generate(seed: int = SEED, umap: bool = True, cells_per_group: int = CELLS_PER_GROUP,
             ) -> tuple[ad.AnnData, ad.AnnData]:
    """Build (burn_sham, atlas) from ``seed``; the same seed gives the same data. ``cells_per_group`` (per cell
    type and condition) scales the burn/sham set, e.g. for benchmarks."""
    rng = np.random.default_rng(seed)
    world = _World(rng)
    burn_sham = _burn_sham(world, rng, cells_per_group)
    atlas = _atlas(world, rng, burn_sham.varm["PCs"].astype(np.float64), burn_sham.var["pca_mean"].to_numpy())
    if umap:
        _add_umap(burn_sham, seed)
    return burn_sham, atlas


def ensure_demo(force: bool = False) -> dict[str, Path]:
    """Generate the demo files once; later calls return their paths at once."""
    paths = {name: demo_path(name) for name in ("burn_sham", "atlas")}
    if force or not all(p.exists() for p in paths.values()):
        burn_sham, atlas = generate()
        paths["burn_sham"].parent.mkdir(parents=True, exist_ok=True)
        for name, adata in (("burn_sham", burn_sham), ("atlas", atlas)):
            tmp = paths[name].with_suffix(f".tmp{os.getpid()}.h5ad")
            adata.write_h5ad(tmp)
            os.replace(tmp, paths[name])  # never leave a half-written cache file under the real name
    return paths


def load_demo(name: str = "burn_sham", with_velocity: bool = False) -> ad.AnnData:
    """The demo as an AnnData (generated on first use). ``with_velocity`` adds scvelo's latent velocity
    (``obsm["velocity_pca"]``, ``obs["velocity_confidence"]``), computed once and cached."""
    path = demo_path(name)
    ensure_demo()
    adata = ad.read_h5ad(path)
    if with_velocity:
        if name != "burn_sham":
            raise ValueError("velocity is available for the burn_sham demo only (the atlas has no spliced counts)")
        from core.velocity import compute_velocity

        compute_velocity(adata, basis="pca")
    return adata
