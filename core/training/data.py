"""From an AnnData to sets of cells: the column mapping, the train/val/test split, the set sampler, and the
Lightning data module that holds them.

A training example is a pair of sets of S cells of one cell type: S control cells (the model's input) and S
perturbed cells of one perturbation (the distribution its output must match). With ``match_by=cell_type_batch``
the controls also come from the perturbed cells' batch where that batch has controls; in burn/sham designs
the mouse is nested in the condition, no burn mouse has sham cells, and matching falls back to cell type (the
log says how often). Sets are drawn with a generator seeded by (seed, epoch, index), so a run is reproducible
and a resumed run draws exactly the sets it would have drawn.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import lightning as L
import numpy as np
import pandas as pd
import torch

from core.config import Config
from core.data.mapping import ColumnMapping, guess_mapping
from core.errors import ConfigError, DataError
from core.training.devices import pin_memory

log = logging.getLogger("core.training")

DEMO_MAPPINGS = {
    "burn_sham": ColumnMapping("condition", "sham", "cell_types_simple_short", "mouse_id", "X_pca",
                               "velocity_pca", "velocity_confidence"),
    "atlas": ColumnMapping("perturbation", "control", "cell_types_simple_short", "batch", "X_pca"),
}
SPLITS = ("train", "val", "test")


def load_adata(cfg: Config):
    """The run's AnnData: the file at data.kwargs.path (read, never written), or the demo (with its latent
    velocity when the velocity loss is on)."""
    from core.data.datasets import load_run_data, run_data

    return load_run_data(run_data(cfg, need_velocity=bool(cfg.model.kwargs.use_velocity_alignment)))


def resolve_mapping(cfg: Config, adata) -> ColumnMapping:
    """Fill every unset data key from the demo's known layout or from the data's best guess, and record the
    result in ``cfg`` so that the saved config says what was used."""
    d = cfg.data.kwargs
    base = DEMO_MAPPINGS[d.dataset] if not d.path else guess_mapping(adata)
    mapping = ColumnMapping(**{k: getattr(d, k) if getattr(d, k) is not None else v
                               for k, v in base.to_dict().items()})
    for k, v in mapping.to_dict().items():
        setattr(d, k, v)
    if cfg.model.kwargs.use_velocity_alignment and not (mapping.velocity_key and mapping.velocity_key in adata.obsm):
        where = f"obsm['{mapping.velocity_key}'] is not in the data" if mapping.velocity_key else "no velocity key"
        raise DataError(f"velocity alignment needs latent velocities but {where}; compute them with 'python -m core "
                        "velocity --adata IN --output OUT' and train on OUT (data.kwargs.velocity_key=velocity_pca), "
                        "or set model.kwargs.use_velocity_alignment=false")
    return mapping


def loss_mapping(cfg: Config, mapping: ColumnMapping) -> ColumnMapping:
    """The mapping the sampler reads: velocity keys only when the velocity term is on."""
    if cfg.model.kwargs.use_velocity_alignment:
        return mapping
    return ColumnMapping(**{**mapping.to_dict(), "velocity_key": None, "confidence_key": None})


def resolve_split(obs: pd.DataFrame, mapping: ColumnMapping, how: str) -> str:
    """``auto`` -> ``batch`` (held-out mice) for a two-condition design (control + one perturbation, as burn/sham)
    with a batch column and >= 2 batches in every condition, else ``fraction``; any other value unchanged."""
    if how != "auto":
        return how
    if not mapping.batch_col or mapping.batch_col not in obs:
        return "fraction"
    pert = obs[mapping.pert_col].astype(str)
    if pert.nunique() != 2 or str(mapping.control_pert) not in set(pert):
        return "fraction"
    batches = obs[mapping.batch_col].astype(str).groupby(pert.to_numpy()).nunique()
    return "batch" if (batches >= 2).all() else "fraction"


def _fraction_split(split: np.ndarray, groups: dict, rng, val_fraction: float, test_fraction: float) -> None:
    for _, positions in sorted(groups.items()):
        idx = rng.permutation(positions)
        n_val, n_test = int(round(len(idx) * val_fraction)), int(round(len(idx) * test_fraction))
        split[idx[:n_val]] = "val"
        split[idx[n_val:n_val + n_test]] = "test"


def make_split(obs: pd.DataFrame, mapping: ColumnMapping, how: str, val_fraction: float, test_fraction: float,
               seed: int, holdout: str | None = None) -> np.ndarray:
    """'train' / 'val' / 'test' per cell (``how`` = auto is first resolved by ``resolve_split``).

    ``batch`` holds out whole batches (mice), so the model is judged on animals it never saw: in each condition
    one batch for test and, with >= 3 batches, another for validation; with 2, validation is ``val_fraction``
    of the training batch's cells. ``fraction`` holds out that fraction of the cells of every (cell type,
    condition) group. ``cell_type`` holds out every cell of the cell type ``holdout`` for test (training never
    sees it perturbed; its controls are what the model predicts from) and ``val_fraction`` of the other cell
    types' cells for validation."""
    how = resolve_split(obs, mapping, how)
    rng = np.random.default_rng(seed)
    split = np.full(len(obs), "train", dtype=object)
    pert = obs[mapping.pert_col].astype(str).to_numpy()
    cell_type = obs[mapping.cell_type_key].astype(str).to_numpy()
    if how == "batch":
        if not mapping.batch_col:
            raise DataError("data.kwargs.split=batch needs a batch column (data.kwargs.batch_col)")
        batch = obs[mapping.batch_col].astype(str).to_numpy()
        for condition in np.unique(pert):
            batches = rng.permutation(np.unique(batch[pert == condition]))
            if len(batches) < 2:
                raise DataError(f"data.kwargs.split=batch needs >= 2 batches of '{mapping.batch_col}' in condition "
                                f"'{condition}' (it has {len(batches)}); use data.kwargs.split=fraction")
            split[(pert == condition) & (batch == batches[0])] = "test"
            if len(batches) >= 3:
                split[(pert == condition) & (batch == batches[1])] = "val"
            else:
                in_train = (pert == condition) & (batch == batches[1])
                groups = pd.Series(np.flatnonzero(in_train)).groupby(cell_type[in_train]).indices
                positions = {k: np.flatnonzero(in_train)[v] for k, v in groups.items()}
                _fraction_split(split, positions, rng, val_fraction, 0.0)
        return split
    if how == "cell_type":
        kinds = sorted(set(cell_type))
        if holdout is None:
            raise DataError(f"data.kwargs.split=cell_type needs data.kwargs.holdout, the cell type to hold out "
                            f"(one of {', '.join(kinds)})")
        if str(holdout) not in kinds:
            raise DataError(f"data.kwargs.holdout={holdout!r} is not a cell type of '{mapping.cell_type_key}'; "
                            f"choose one of {', '.join(kinds)}")
        held = cell_type == str(holdout)
        split[held] = "test"
        groups = pd.DataFrame({"ct": cell_type[~held], "pert": pert[~held]}).groupby(["ct", "pert"], sort=True).indices
        _fraction_split(split, {k: np.flatnonzero(~held)[v] for k, v in groups.items()}, rng, val_fraction, 0.0)
        return split
    groups = pd.DataFrame({"ct": cell_type, "pert": pert}).groupby(["ct", "pert"], sort=True).indices
    _fraction_split(split, groups, rng, val_fraction, test_fraction)
    return split


@dataclass
class CellTable:
    """Everything the sampler needs, as plain arrays over the N cells."""

    z: np.ndarray  # [N, D] float32
    pert: np.ndarray  # [N] str
    cell_type: np.ndarray  # [N] str
    batch: np.ndarray | None  # [N] str
    velocity: np.ndarray | None  # [N, D] float32
    confidence: np.ndarray | None  # [N] float32
    split: np.ndarray  # [N] train | val | test
    obs_names: np.ndarray
    control: str

    @classmethod
    def from_adata(cls, adata, mapping: ColumnMapping, split: np.ndarray) -> CellTable:
        obs = adata.obs
        velocity = confidence = None
        if mapping.velocity_key:
            velocity = np.asarray(adata.obsm[mapping.velocity_key], dtype=np.float32)
            if mapping.confidence_key and mapping.confidence_key in obs:
                confidence = np.clip(obs[mapping.confidence_key].to_numpy(np.float32), 0, None)
        return cls(np.asarray(adata.obsm[mapping.embed_key], dtype=np.float32),
                   obs[mapping.pert_col].astype(str).to_numpy(), obs[mapping.cell_type_key].astype(str).to_numpy(),
                   obs[mapping.batch_col].astype(str).to_numpy() if mapping.batch_col else None,
                   velocity, confidence, np.asarray(split), adata.obs_names.to_numpy(), mapping.control_pert)


@dataclass
class SetGroup:
    """Cells that may form one training pair: perturbed cells of ``label`` and their matched controls."""

    label: str
    cell_type: str
    perturbed: np.ndarray  # row positions
    controls: np.ndarray
    matched_by: str  # cell_type | cell_type_batch | cell_type (no controls in batch)


def set_groups(table: CellTable, split: str, match_by: str = "cell_type") -> list[SetGroup]:
    in_split = table.split == split
    is_control = table.pert == table.control
    groups = []
    for ct in np.unique(table.cell_type[in_split]):
        controls = np.flatnonzero(in_split & is_control & (table.cell_type == ct))
        in_ct = in_split & ~is_control & (table.cell_type == ct)
        for label in np.unique(table.pert[in_ct]):
            perturbed = np.flatnonzero(in_ct & (table.pert == label))
            if len(controls) == 0:
                continue
            if match_by == "cell_type_batch" and table.batch is not None:
                for b in np.unique(table.batch[perturbed]):
                    same = controls[table.batch[controls] == b]
                    how = "cell_type_batch" if len(same) else "cell_type (no controls in batch)"
                    groups.append(SetGroup(label, ct, perturbed[table.batch[perturbed] == b],
                                           same if len(same) else controls, how))
            else:
                groups.append(SetGroup(label, ct, perturbed, controls, "cell_type"))
    return groups


class SetSampler(torch.utils.data.Dataset):
    """Pairs of (control set, perturbed set) of S cells of one cell type from one split. A group is drawn with
    probability proportional to its perturbed cells; cells are drawn without replacement when there are enough."""

    def __init__(self, table: CellTable, split: str, set_len: int, pert_map: dict[str, int], seed: int,
                 n_sets: int | None = None, match_by: str = "cell_type", fixed: bool = False,
                 batch_map: dict[str, int] | None = None):
        self.table, self.set_len, self.seed, self.fixed, self.epoch = table, set_len, seed, fixed, 0
        self.genes = None  # [N, G] (array-like, rows read per set) once SetDataModule.use_genes is called
        self.pert_map, self.batch_map = pert_map, batch_map or {}
        self.groups = set_groups(table, split, match_by)
        if not self.groups:
            raise DataError(f"the {split} split has no cell type with both control and perturbed cells; lower "
                            "data.kwargs.val_fraction / test_fraction, use split=fraction, or check the mapping")
        sizes = np.array([len(g.perturbed) for g in self.groups], dtype=np.float64)
        self.weights = sizes / sizes.sum()
        self.n_cells = int(sizes.sum())
        self.n_sets = n_sets or max(8, int(np.ceil(sizes.sum() / set_len)))
        if self.batch_map and table.batch is not None:
            unknown = len(self.batch_map)
            self.batch_idx = np.array([self.batch_map.get(b, unknown) for b in table.batch], dtype=np.int64)
        else:
            self.batch_idx = None

    def __len__(self) -> int:
        return self.n_sets

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, 0 if self.fixed else self.epoch, i])
        group = self.groups[rng.choice(len(self.groups), p=self.weights)]
        s, t = self.set_len, self.table
        ctrl = rng.choice(group.controls, s, replace=len(group.controls) < s)
        pert = rng.choice(group.perturbed, s, replace=len(group.perturbed) < s)
        item = {"z_control": torch.from_numpy(t.z[ctrl]), "z_perturbed": torch.from_numpy(t.z[pert]),
                "pert": torch.tensor(self.pert_map[group.label])}
        if self.genes is not None:  # the perturbed cells' HVG expression, target of a gene decoder
            rows = self.genes[pert]
            rows = rows.toarray() if hasattr(rows, "toarray") else rows
            item["genes_perturbed"] = torch.from_numpy(np.asarray(rows, dtype=np.float32))
        if self.batch_idx is not None:
            item["batch_idx"] = torch.from_numpy(self.batch_idx[ctrl])
        if t.velocity is not None:
            item["v_z"] = torch.from_numpy(t.velocity[ctrl])
            conf = t.confidence[ctrl] if t.confidence is not None else np.ones(s, dtype=np.float32)
            item["confidence"] = torch.from_numpy(conf)
        return item


def pert_map_for(table: CellTable, labelled: np.ndarray | None = None) -> dict[str, int]:
    """Label -> row of the perturbation embedding; the control first, then the others sorted. ``labelled``:
    the cells whose label counts (not those whose condition is missing, which astype(str) calls "nan")."""
    pert = table.pert if labelled is None else table.pert[labelled]
    labels = [table.control] + sorted(set(pert) - {table.control})
    return {label: i for i, label in enumerate(labels)}


def batch_map_for(table: CellTable) -> dict[str, int]:
    """Batch label -> row of the batch embedding, over the training split only (held-out batches are unknown)."""
    labels = sorted(set(table.batch[table.split == "train"])) if table.batch is not None else []
    return {label: i for i, label in enumerate(labels)}


class SetDataModule(L.LightningDataModule):
    """The run's cells, split and samplers; validation sets are fixed, so every validation sees the same pairs."""

    def __init__(self, cfg: Config, adata, mapping: ColumnMapping, split: np.ndarray, cell_types=None):
        """``cell_types``: the cell types to train on (default all); the others take no part in any set."""
        super().__init__()
        m, d, t = cfg.model.kwargs, cfg.data.kwargs, cfg.training
        self.batch_size, self.set_len, self.seed, self.match_by = t.batch_size, m.cell_set_len, t.seed, d.match_by
        self.accelerator = t.accelerator  # the loaders pin memory when it resolves to CUDA (devices.pin_memory)
        if cell_types is not None:
            split = np.where(adata.obs[mapping.cell_type_key].astype(str).isin(cell_types), split, "unused")
        # cells without a condition or cell type take no part: astype(str) would turn NaN into a label "nan"
        labelled = (adata.obs[mapping.pert_col].notna() & adata.obs[mapping.cell_type_key].notna()).to_numpy()
        split = np.where(labelled, split, "unused")
        self.table = CellTable.from_adata(adata, loss_mapping(cfg, mapping), split)
        self.obsm, self.gene_dim = adata.obsm, None  # obsm for use_genes; a reference, not a copy
        self.pert_map = pert_map_for(self.table, labelled)
        if m.use_batch and not mapping.batch_col:
            raise ConfigError("model.kwargs.use_batch=true needs a batch column (data.kwargs.batch_col)")
        self.batch_map = batch_map_for(self.table) if m.use_batch else {}
        self.train_sets = SetSampler(self.table, "train", self.set_len, self.pert_map, self.seed,
                                     match_by=self.match_by, batch_map=self.batch_map)
        n_val = int(((self.table.split == "val") & (self.table.pert != self.table.control)).sum())
        self.val_sets = SetSampler(self.table, "val", self.set_len, self.pert_map, self.seed + 1,
                                   n_sets=max(16, int(np.ceil(n_val / self.set_len))), match_by=self.match_by,
                                   fixed=True, batch_map=self.batch_map)

    def use_genes(self, key: str = "X_hvg") -> None:
        """Give every set the perturbed cells' ``obsm[key]`` too (a gene decoder's targets, Arc's key)."""
        if key not in self.obsm:
            raise DataError(f"the model decodes to genes and is trained against obsm['{key}'], which this data set "
                            f"lacks (it has {list(self.obsm)}); add the HVG matrix the model was trained on, or "
                            "set model.kwargs.decoder_weight=0 to keep the decoder frozen")
        genes = self.obsm[key]
        for sampler in (self.train_sets, self.val_sets):
            sampler.genes = genes
        self.gene_dim = int(genes.shape[1])

    def matching_notes(self) -> list[str]:
        notes = []
        fallback = [g for g in self.train_sets.groups if g.matched_by.startswith("cell_type (")]
        if self.match_by == "cell_type_batch" and self.table.batch is not None:
            notes.append(f"controls matched by cell type + batch: {len(self.train_sets.groups) - len(fallback)} of "
                         f"{len(self.train_sets.groups)} training groups have controls in their own batch; "
                         f"{len(fallback)} fall back to cell type (batch nested in condition)")
        else:
            notes.append(f"controls matched by cell type ({len(self.train_sets.groups)} training groups)")
        return notes

    def train_dataloader(self):
        from core.training.resume_state import ResumableLoader

        pin = pin_memory(self.accelerator)
        if self.trainer is not None and self.trainer.world_size > 1:  # DDP swaps in its own sampler
            return torch.utils.data.DataLoader(self.train_sets, batch_size=self.batch_size, shuffle=False,
                                               pin_memory=pin)
        # resumable in mid-epoch: Lightning saves how many batches of the epoch were processed (resume_state.py)
        return ResumableLoader(self.train_sets, self.batch_size,
                               lambda: self.trainer.fit_loop.epoch_loop.batch_progress.current.processed,
                               pin_memory=pin)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(self.val_sets, batch_size=self.batch_size, shuffle=False,
                                           pin_memory=pin_memory(self.accelerator))
