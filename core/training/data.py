"""From an AnnData to sets of cells: the column mapping, the train/val/test split, and the set sampler.

A training example is a pair of sets of S cells of one cell type: S control cells (the model's input) and S
perturbed cells (the distribution its output must match). Sets are drawn with a generator seeded by
(seed, epoch, index), so a run is reproducible and a resumed run draws exactly the sets it would have drawn.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from core.config import Config
from core.data.mapping import ColumnMapping, guess_mapping
from core.errors import DataError

log = logging.getLogger("core.training")

DEMO_MAPPINGS = {
    "burn_sham": ColumnMapping("condition", "sham", "cell_types_simple_short", "mouse_id", "X_pca",
                               "velocity_pca", "velocity_confidence"),
    "atlas": ColumnMapping("perturbation", "control", "cell_types_simple_short", "batch", "X_pca"),
}


def load_adata(cfg: Config):
    """The run's AnnData: the file at data.kwargs.path, or the demo (with velocity when the loss needs it)."""
    d = cfg.data.kwargs
    if d.path:
        from core.data.io import read_h5ad

        adata = read_h5ad(d.path)
        if cfg.model.kwargs.use_velocity_alignment and not (d.velocity_key and d.velocity_key in adata.obsm):
            from core.velocity import compute_velocity

            embed = d.embed_key or guess_mapping(adata).embed_key
            compute_velocity(adata, basis="latent", embed_key=embed)
            d.velocity_key, d.confidence_key = "velocity_latent", "velocity_confidence"
        return adata
    from core.data.demo import load_demo

    return load_demo(d.dataset, with_velocity=cfg.model.kwargs.use_velocity_alignment and d.dataset == "burn_sham")


def resolve_mapping(cfg: Config, adata) -> ColumnMapping:
    """Fill every unset data key from the demo's known layout or from the data's best guess."""
    d = cfg.data.kwargs
    base = DEMO_MAPPINGS[d.dataset] if not d.path else guess_mapping(adata)
    mapping = ColumnMapping(**{k: getattr(d, k) if getattr(d, k) is not None else v
                               for k, v in base.to_dict().items()})
    if not cfg.model.kwargs.use_velocity_alignment:
        mapping.velocity_key, mapping.confidence_key = None, None
    for k, v in mapping.to_dict().items():
        setattr(d, k, v)  # the resolved config then records what was used
    return mapping


def make_split(obs: pd.DataFrame, mapping: ColumnMapping, how: str, val_fraction: float, test_fraction: float,
               seed: int) -> np.ndarray:
    """'train' / 'val' / 'test' per cell. 'batch' holds out whole batches (mice) per condition; 'fraction'
    holds out that fraction of cells within each cell type and condition."""
    rng = np.random.default_rng(seed)
    split = np.full(len(obs), "train", dtype=object)
    pert = obs[mapping.pert_col].astype(str).to_numpy()
    if how == "batch":
        if not mapping.batch_col:
            raise DataError("data.kwargs.split=batch needs a batch column (data.kwargs.batch_col)")
        batch = obs[mapping.batch_col].astype(str).to_numpy()
        for condition in np.unique(pert):
            batches = rng.permutation(np.unique(batch[pert == condition]))
            if len(batches) < 3:
                raise DataError(f"split=batch needs >= 3 batches in condition '{condition}' (has {len(batches)}); "
                                "use data.kwargs.split=fraction")
            split[(pert == condition) & (batch == batches[0])] = "val"
            split[(pert == condition) & (batch == batches[1])] = "test"
        return split
    cell_type = obs[mapping.cell_type_key].astype(str).to_numpy()
    for key in pd.unique(pd.Series(list(zip(cell_type, pert)))):
        idx = rng.permutation(np.flatnonzero((cell_type == key[0]) & (pert == key[1])))
        n_val, n_test = int(round(len(idx) * val_fraction)), int(round(len(idx) * test_fraction))
        split[idx[:n_val]] = "val"
        split[idx[n_val:n_val + n_test]] = "test"
    return split


@dataclass
class CellTable:
    """Everything the sampler needs, as plain arrays."""

    z: np.ndarray  # [N, D] float32
    pert: np.ndarray  # [N] str
    cell_type: np.ndarray  # [N] str
    batch: np.ndarray | None
    velocity: np.ndarray | None
    confidence: np.ndarray | None
    split: np.ndarray
    obs_names: np.ndarray
    control: str

    @classmethod
    def from_adata(cls, adata, mapping: ColumnMapping, split: np.ndarray) -> CellTable:
        obs = adata.obs
        velocity = confidence = None
        if mapping.velocity_key:
            velocity = np.asarray(adata.obsm[mapping.velocity_key], dtype=np.float32)
            if mapping.confidence_key and mapping.confidence_key in obs:
                confidence = obs[mapping.confidence_key].to_numpy(np.float32)
        return cls(np.asarray(adata.obsm[mapping.embed_key], dtype=np.float32),
                   obs[mapping.pert_col].astype(str).to_numpy(), obs[mapping.cell_type_key].astype(str).to_numpy(),
                   obs[mapping.batch_col].astype(str).to_numpy() if mapping.batch_col else None,
                   velocity, confidence, np.asarray(split), adata.obs_names.to_numpy(), mapping.control_pert)


class SetSampler(torch.utils.data.Dataset):
    """Pairs of (control set, perturbed set) of S cells of one cell type, from one split."""

    def __init__(self, table: CellTable, split: str, set_len: int, pert_map: dict[str, int], seed: int,
                 n_sets: int | None = None, match_by: str = "cell_type", fixed: bool = False):
        self.table, self.set_len, self.seed, self.fixed, self.epoch = table, set_len, seed, fixed, 0
        self.pert_map = pert_map
        in_split = table.split == split
        control = in_split & (table.pert == table.control)
        self.groups = []  # (pert label, perturbed cells, control cells)
        for ct in np.unique(table.cell_type[in_split]):
            ctrl_ct = np.flatnonzero(control & (table.cell_type == ct))
            for label in np.unique(table.pert[in_split & ~control & (table.cell_type == ct)]):
                perturbed = np.flatnonzero(in_split & (table.pert == label) & (table.cell_type == ct))
                if len(ctrl_ct) == 0 or len(perturbed) == 0:
                    continue
                if match_by == "cell_type_batch" and table.batch is not None:
                    for b in np.unique(table.batch[perturbed]):
                        same = ctrl_ct[table.batch[ctrl_ct] == b]
                        pool = same if len(same) else ctrl_ct
                        self.groups.append((label, perturbed[table.batch[perturbed] == b], pool))
                else:
                    self.groups.append((label, perturbed, ctrl_ct))
        if not self.groups:
            raise DataError(f"the {split} split has no cell type with both control and perturbed cells; "
                            "lower val/test fractions or check the mapping")
        sizes = np.array([len(g[1]) for g in self.groups], dtype=np.float64)
        self.weights = sizes / sizes.sum()
        self.n_sets = n_sets or max(8, int(np.ceil(sizes.sum() / set_len)))

    def __len__(self) -> int:
        return self.n_sets

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, 0 if self.fixed else self.epoch, i])
        label, perturbed, controls = self.groups[rng.choice(len(self.groups), p=self.weights)]
        s = self.set_len
        ctrl = rng.choice(controls, s, replace=len(controls) < s)
        pert = rng.choice(perturbed, s, replace=len(perturbed) < s)
        t = self.table
        item = {"z_control": torch.from_numpy(t.z[ctrl]), "z_perturbed": torch.from_numpy(t.z[pert]),
                "pert": torch.tensor(self.pert_map[label])}
        if t.velocity is not None:
            item["v_z"] = torch.from_numpy(t.velocity[ctrl])
            conf = t.confidence[ctrl] if t.confidence is not None else np.ones(s, dtype=np.float32)
            item["confidence"] = torch.from_numpy(np.clip(conf, 0, None))
        return item


def pert_map_for(table: CellTable) -> dict[str, int]:
    """Label -> row of the perturbation embedding; the control first."""
    labels = [table.control] + sorted(set(table.pert) - {table.control})
    return {label: i for i, label in enumerate(labels)}
