"""Baselines that every model number is shown beside, fitted on the training split only.

A baseline turns the held-out control cells of one (perturbation, cell type) group into predicted perturbed
cells, as the model does. Shapes: z_control [N, D] the held-out controls; training cells are rows of the
same embedding [cells, D].

    no_change            z_pred = z_control: a model that learned nothing
    global_mean_shift    z_control + the mean over training cell types of (mean burn - mean control): one shift
                         for every cell type (the average is over types, so cell-type composition does not leak in)
    train_mean_shift     z_control + that shift for the group's own cell type
    gaussian_ot          the optimal-transport map between Gaussians fitted to the group's training controls
                         N(m_c, S_c) and burn cells N(m_b, S_b):  T(x) = m_b + A (x - m_c),
                         A = S_c^-1/2 (S_c^1/2 S_b S_c^1/2)^1/2 S_c^-1/2  (Gelbrich / Dowson-Landau; A S_c A = S_b),
                         covariances shrunk towards a scaled identity (Ledoit-Wolf), which keeps small groups
                         and groups with fewer cells than dims well posed
    train_burn_resample  N training burn cells of the same cell type, drawn at random: with held-out cells
                         from the same mice this is the noise floor of interpolation
    real_split_half      not a predictor: the held-out real burn cells split in two random halves, one scored
                         against the other, the floor that sampling noise alone puts under every distance. The
                         energy distance is a V-statistic (self-pairs included), biased upwards by
                         1/2 dbar (1/n + 1/m) for sets of n and m cells from one distribution (dbar = mean
                         distance between two distinct cells); halves are smaller than the sets the model is
                         scored on, so the floor's energy distance is moved to those sizes:
                         ED_floor = ED(A, B) - 1/2 dbar (1/|A| + 1/|B|) + 1/2 dbar (1/N + 1/M)
                         (N predictions, M real cells). Its other metrics are half against half.

Per-cell-type baselines need training burn and control cells of that cell type; in the held-out cell type
design they do not exist and ``predict`` says so instead of inventing a number.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

PREDICTORS = ("no_change", "global_mean_shift", "train_mean_shift", "gaussian_ot", "train_burn_resample")
FLOOR = "real_split_half"
DESCRIPTIONS = {
    "no_change": "z_pred = z_control (delta_z = 0)",
    "global_mean_shift": "z_control + training mean shift (burn - control), averaged over cell types",
    "train_mean_shift": "z_control + training mean shift (burn - control) of the cell type",
    "gaussian_ot": "Gaussian optimal-transport map of the cell type, training control -> burn (Ledoit-Wolf "
                   "shrunk covariances)",
    "train_burn_resample": "training burn cells of the cell type, resampled (noise floor for interpolation)",
    FLOOR: "held-out real burn cells, one random half scored against the other (not a predictor)",
}
MIN_CELLS = 2  # a mean and a covariance need two cells


def ledoit_wolf(cells) -> tuple[np.ndarray, float]:
    """(shrunk covariance, shrinkage) of ``cells`` [n, p]: (1 - delta) S + delta mu I, with S the
    maximum-likelihood covariance, mu = tr(S) / p and delta the Ledoit-Wolf (2004) estimate
    min(b^2, d^2) / d^2, d^2 = ||S - mu I||_F^2 / p, b^2 = sum_k ||x_k x_k^T - S||_F^2 / (n^2 p)."""
    x = np.asarray(cells, dtype=np.float64)
    n, p = x.shape
    x = x - x.mean(0)
    sample = x.T @ x / n
    mu = np.trace(sample) / p
    d2 = ((sample - mu * np.eye(p)) ** 2).sum() / p
    if d2 <= 0:  # already a multiple of the identity
        return sample, 0.0
    # sum_k ||x_k x_k^T - S||^2 = sum_k ||x_k||^4 - n ||S||^2
    b2 = ((np.einsum("ki,ki->k", x, x) ** 2).sum() - n * (sample**2).sum()) / (n**2 * p)
    shrinkage = float(min(max(b2, 0.0), d2) / d2)
    return (1 - shrinkage) * sample + shrinkage * mu * np.eye(p), shrinkage


def _sym_power(matrix: np.ndarray, power: float) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    values = np.clip(values, 1e-12 * max(values.max(initial=0.0), 1e-300), None)
    return (vectors * values**power) @ vectors.T


def gaussian_ot_matrix(cov_control: np.ndarray, cov_burn: np.ndarray) -> np.ndarray:
    """A = S_c^-1/2 (S_c^1/2 S_b S_c^1/2)^1/2 S_c^-1/2, symmetric positive definite."""
    root = _sym_power(cov_control, 0.5)
    inv_root = _sym_power(cov_control, -0.5)
    middle = _sym_power(root @ cov_burn @ root, 0.5)
    a = inv_root @ middle @ inv_root
    return (a + a.T) / 2


@dataclass
class GaussianOTMap:
    """T(x) = mean_burn + (x - mean_control) A, fitted on training cells of one group."""

    mean_control: np.ndarray
    mean_burn: np.ndarray
    a: np.ndarray
    shrinkage: tuple[float, float]  # of the control and burn covariances

    @classmethod
    def fit(cls, control_cells, burn_cells) -> GaussianOTMap:
        control, burn = np.asarray(control_cells, np.float64), np.asarray(burn_cells, np.float64)
        cov_c, shrink_c = ledoit_wolf(control)
        cov_b, shrink_b = ledoit_wolf(burn)
        return cls(control.mean(0), burn.mean(0), gaussian_ot_matrix(cov_c, cov_b), (shrink_c, shrink_b))

    def __call__(self, z_control) -> np.ndarray:
        return self.mean_burn + (np.asarray(z_control, np.float64) - self.mean_control) @ self.a


@dataclass
class BaselinePrediction:
    """A baseline's prediction for one group, or None with the reason it does not exist."""

    z_pred: np.ndarray | None
    reason: str = ""


def split_half(z_real, seed: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
    """The real cells in two random halves (None below 2 * MIN_CELLS cells)."""
    z_real = np.asarray(z_real, np.float64)
    if len(z_real) < 2 * MIN_CELLS:
        return None
    order = np.random.default_rng(seed).permutation(len(z_real))
    half = len(z_real) // 2
    return z_real[np.sort(order[:half])], z_real[np.sort(order[half:])]


def mean_pairwise_distance(cells, max_cells: int | None = 2000, seed: int = 0) -> float:
    """dbar: the mean Euclidean distance between two distinct cells (a seeded subset beyond max_cells)."""
    from scipy.spatial.distance import pdist

    cells = np.asarray(cells, np.float64)
    if max_cells is not None and len(cells) > max_cells:
        cells = cells[np.sort(np.random.default_rng(seed).choice(len(cells), max_cells, replace=False))]
    return float(pdist(cells).mean()) if len(cells) > 1 else float("nan")


def size_matched_floor(ed_halves: float, dbar: float, halves: tuple[int, int], scored: tuple[int, int],
                       max_cells: int | None = None) -> float:
    """The halves' energy distance moved to the set sizes a prediction is scored at (see the module doc);
    sizes are capped at ``max_cells`` as ``metrics.energy_distance`` caps them."""
    def cap(n):
        return min(n, max_cells) if max_cells is not None else n

    def bias(n, m):
        return 0.5 * dbar * (1 / cap(n) + 1 / cap(m))

    return float(ed_halves - bias(*halves) + bias(*scored))


def _group_seed(seed: int, *labels: str) -> list[int]:
    # Seeded by the group's name, so a group's draw does not depend on which other groups are scored.
    return [int(seed), *(zlib.crc32(label.encode()) for label in labels)]


class Baselines:
    """Every predictor of ``PREDICTORS`` fitted on the training cells.

    ``embedding`` [cells, D]; ``pert``, ``cell_type`` [cells] labels; ``is_train`` [cells] bool (the run's
    training split); ``control`` the control label."""

    def __init__(self, embedding, pert, cell_type, is_train, control: str, seed: int = 0):
        self.embedding = np.asarray(embedding, np.float64)
        self.pert, self.cell_type = np.asarray(pert).astype(str), np.asarray(cell_type).astype(str)
        self.is_train, self.control, self.seed = np.asarray(is_train, bool), str(control), int(seed)
        self._maps: dict[tuple[str, str], GaussianOTMap] = {}

    def _train_cells(self, perturbation: str, kind: str) -> np.ndarray:
        rows = self.is_train & (self.pert == perturbation) & (self.cell_type == kind)
        return self.embedding[rows]

    def type_shift(self, perturbation: str, kind: str) -> np.ndarray | None:
        burn, control = self._train_cells(perturbation, kind), self._train_cells(self.control, kind)
        if len(burn) == 0 or len(control) == 0:
            return None
        return burn.mean(0) - control.mean(0)

    def global_shift(self, perturbation: str) -> np.ndarray | None:
        kinds = sorted(set(self.cell_type[self.is_train & (self.pert == perturbation)]))
        shifts = [s for s in (self.type_shift(perturbation, k) for k in kinds) if s is not None]
        return np.mean(shifts, axis=0) if shifts else None

    def ot_map(self, perturbation: str, kind: str) -> GaussianOTMap | None:
        key = (perturbation, kind)
        if key not in self._maps:
            burn, control = self._train_cells(perturbation, kind), self._train_cells(self.control, kind)
            if len(burn) < MIN_CELLS or len(control) < MIN_CELLS:
                return None
            self._maps[key] = GaussianOTMap.fit(control, burn)
        return self._maps[key]

    def predict(self, perturbation: str, kind: str, z_control) -> dict[str, BaselinePrediction]:
        z_control = np.asarray(z_control, np.float64)
        missing = f"no training '{perturbation}' and control cells of cell type '{kind}'"
        out = {"no_change": BaselinePrediction(z_control.copy())}
        shift = self.global_shift(perturbation)
        out["global_mean_shift"] = (BaselinePrediction(z_control + shift) if shift is not None else
                                    BaselinePrediction(None, f"no training '{perturbation}' cells"))
        shift = self.type_shift(perturbation, kind)
        out["train_mean_shift"] = (BaselinePrediction(z_control + shift) if shift is not None
                                   else BaselinePrediction(None, missing))
        mapping = self.ot_map(perturbation, kind)
        out["gaussian_ot"] = (BaselinePrediction(mapping(z_control)) if mapping is not None else
                              BaselinePrediction(None, f"fewer than {MIN_CELLS} training '{perturbation}' or "
                                                       f"control cells of cell type '{kind}'"))
        burn = self._train_cells(perturbation, kind)
        if len(burn):
            rng = np.random.default_rng(_group_seed(self.seed, perturbation, kind))
            rows = rng.choice(len(burn), size=len(z_control), replace=len(burn) < len(z_control))
            out["train_burn_resample"] = BaselinePrediction(burn[rows])
        else:
            out["train_burn_resample"] = BaselinePrediction(None, missing)
        return out
