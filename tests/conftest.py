"""Shared fixtures: the demo data is generated once per machine (data/cache/) and reused by every test."""

import numpy as np
import pytest

from core.data.demo import load_demo


@pytest.fixture(scope="session")
def demo_adata():
    """The full burn/sham demo (12,000 cells); tests must not modify it."""
    return load_demo("burn_sham")


@pytest.fixture(scope="session")
def demo_with_velocity():
    return load_demo("burn_sham", with_velocity=True)


@pytest.fixture(scope="session")
def atlas_adata():
    return load_demo("atlas")


@pytest.fixture(scope="session")
def small_demo(demo_with_velocity):
    """About 1,200 cells (100 per cell type and condition) with velocities: for fast training tests."""
    obs = demo_with_velocity.obs
    rng = np.random.default_rng(0)
    keep = np.concatenate([
        rng.choice(positions, 100, replace=False)
        for positions in obs.groupby(["cell_types_simple_short", "condition"], observed=True).indices.values()
    ])
    return demo_with_velocity[np.sort(keep)].copy()
