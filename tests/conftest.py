"""Shared fixtures: the demo data is generated once per machine (data/cache/ or $ST_DATA_CACHE) and reused by
every test session; its velocity is computed once and cached beside it (core/velocity/pipeline.py)."""

import numpy as np
import pytest

from core.data.demo import load_demo


@pytest.fixture(scope="session")
def demo_adata():
    """The full burn/sham demo (12,000 cells x 1,000 genes), without velocity; tests must not modify it."""
    return load_demo("burn_sham")


@pytest.fixture(scope="session")
def demo_with_velocity():
    """The burn/sham demo with obsm['velocity_pca'], obsm['velocity_pca_scvelo'], obs['velocity_confidence']
    and layers['velocity'] (fast engine, stochastic mode); tests must not modify it."""
    return load_demo("burn_sham", with_velocity=True)


@pytest.fixture(scope="session")
def atlas_adata():
    """The pretraining atlas (13 perturbations incl. 'control' x 6 cell types, 9,360 cells)."""
    return load_demo("atlas")


@pytest.fixture(scope="session")
def small_demo(demo_with_velocity):
    """1,200 cells (100 per cell type and condition) of the demo with its velocities: for fast
    training tests. A copy: tests may modify it only after copying it again."""
    obs = demo_with_velocity.obs
    rng = np.random.default_rng(0)
    keep = np.concatenate([
        rng.choice(positions, 100, replace=False)
        for positions in obs.groupby(["cell_types_simple_short", "condition"], observed=True).indices.values()
    ])
    return demo_with_velocity[np.sort(keep)].copy()
