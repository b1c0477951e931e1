"""A run's data: read, checked against the mapping and the set size, split by the design, built into sets.

Everything written here goes to the run folder (config.yaml with the filled-in data keys, split.csv), by rank 0.
"""

from __future__ import annotations

from pathlib import Path

from core.config import Config, save_config
from core.io.atomic import atomic_write_text
from core.training.devices import is_rank_zero


def prepare_data(cfg: Config, run_dir: Path, phase=lambda text: None):
    """``phase(text)``: called as each part starts, so the status says which one is running (they took 16 s
    together on the demo, most of it reading the data or, with velocity on, computing velocity)."""
    from core.data.designs import INTERPOLATION_WARNING
    from core.data.fingerprint import embedding_fingerprint
    from core.data.split_check import train_split_cell_types
    from core.data.validate import validate
    from core.training.data import SetDataModule, load_adata, loss_mapping, make_split, resolve_mapping, resolve_split

    d = cfg.data.kwargs
    velocity_first = cfg.model.kwargs.use_velocity_alignment and not d.path and not d.velocity_key
    phase("reading the data set" + (" and computing its velocity (cached after the first run)"
                                    if velocity_first else ""))
    adata = load_adata(cfg)
    mapping = resolve_mapping(cfg, adata)
    if is_rank_zero():  # again, with the data keys the mapping filled in
        save_config(cfg, run_dir / "config.yaml")
    phase(f"checking {adata.n_obs:,} cells against the mapping")
    report = validate(adata, loss_mapping(cfg, mapping), set_size=cfg.model.kwargs.cell_set_len)
    report.raise_if_errors()
    notes = [f"data: {w}" for w in report.warnings]
    nested = any("nested in condition" in w for w in report.warnings)
    if nested and cfg.model.kwargs.use_batch:
        notes.append(f"WARNING: model.kwargs.use_batch=true while '{mapping.batch_col}' is nested in condition: the "
                     "batch embedding can encode the condition itself; consider model.kwargs.use_batch=false")
    phase("splitting the cells and building the sets")
    d.split = resolve_split(adata.obs, mapping, d.split)  # the saved config says which design was used
    split = make_split(adata.obs, mapping, d.split, d.val_fraction, d.test_fraction, cfg.training.seed, d.holdout)
    if d.split == "fraction":
        notes.append(f"WARNING: {INTERPOLATION_WARNING}")
    if is_rank_zero():
        import pandas as pd

        frame = pd.DataFrame({"obs_name": adata.obs_names.astype(str), "split": split})
        atomic_write_text(run_dir / "split.csv", frame.to_csv(index=False))
    usable, split_notes = train_split_cell_types(adata.obs, mapping, split, report.usable_cell_types,
                                                 cfg.model.kwargs.cell_set_len)  # counted after the split
    notes += [f"data: {w}" for w in split_notes]
    data = SetDataModule(cfg, adata, mapping, split, cell_types=usable)
    data.embedding = embedding_fingerprint(adata, mapping.embed_key)  # recorded in the checkpoint
    notes += data.matching_notes()
    counts = {s: int((split == s).sum()) for s in ("train", "val", "test")}
    notes.append(f"split by {d.split}: {counts['train']} train, {counts['val']} val, {counts['test']} test cells "
                 f"(split.csv)")
    return data, mapping, notes
