"""``evaluate_run``: a trained run scored on its held-out cells (``python -m core evaluate RUN``).

1. The run's config.yaml says which data and keys it trained on; split.csv which cells are held out.
2. ``core.infer.predict`` turns the held-out control cells into predicted perturbed cells, with the run's
   best checkpoint (else final, else last), and again with its final checkpoint when that is another file.
3. ``core.evaluation.heldout.evaluate_predictions`` scores them per cell type and overall, next to the
   baselines of ``core.evaluation.baselines`` and the real-vs-real floor; cos(delta_z, v_z) where the data
   has latent velocities (the demo's are computed once and cached), weighted by confidence as the run's
   loss was; on the demo also cos(delta_z, true velocity) (``cos_delta_true_v``). The final checkpoint's
   scores are under ``final``; the design (``core.data.designs``) says what the held-out cells measure, with
   a warning when they measure interpolation.
4. Genes (``core.evaluation.genes``): per cell type, the predicted log2 fold changes in gene space beside the
   observed ones and cell-eval's top-k DE overlap, through the embedding's PCA loadings or the model's gene
   decoder; without either, metrics.json's "genes" says why and nothing is guessed (eval/gene_lfc.csv per gene).
5. The run's training-stability figures (``stability_summary`` of metrics.jsonl) are added, and
   eval/metrics.json, per_cell_type.csv, gene_lfc.csv and predictions.h5ad are written atomically.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.data.designs import describe_design
from core.errors import DataError
from core.evaluation import metrics
from core.evaluation.gene_decoders import gene_decoder
from core.evaluation.genes import DEFAULT_GENE_TOP_K, gene_evaluation, no_decoder_summary
from core.evaluation.heldout import DataKeys, PredictionKeys, evaluate_predictions
from core.evaluation.report import write_evaluation
from core.evaluation.stability import stability_summary

log = logging.getLogger("core.evaluation")
TRUE_VELOCITY_KEY = "true_velocity_pca"  # core/data/demo.py: the demo's dz/dt in obsm["X_pca"] units


def read_split(run_dir: Path):
    """split.csv as a pandas Series obs_name -> train|val|test."""
    import pandas as pd

    path = Path(run_dir) / "split.csv"
    if not path.is_file():
        raise DataError(f"{path} is missing: the run has no record of its held-out cells; train it again")
    frame = pd.read_csv(path, dtype=str)
    if not {"obs_name", "split"} <= set(frame.columns):
        raise DataError(f"{path} must have the columns obs_name and split; it has {list(frame.columns)}")
    return frame.set_index("obs_name")["split"]


def run_data(cfg, data_path=None):
    """The AnnData the run trained on: ``data_path`` if given, else the run's data.kwargs.path, else its demo
    (burn/sham with its latent velocity, so every run can be scored against velocity)."""
    from core.data.datasets import RunData, load_run_data, run_data

    return load_run_data(RunData(str(data_path), None, False) if data_path else run_data(cfg))


def evaluate_run(
    run_dir,
    split: str = "test",
    output=None,
    checkpoint=None,
    adata=None,
    data_path=None,
    top_k: int = metrics.DEFAULT_TOP_K,
    max_cells: int | None = metrics.DEFAULT_MAX_CELLS,
    seed: int = 0,
    device: str | None = None,
    save_predictions: bool = True,
    progress: bool | None = None,
) -> dict:
    """Evaluate the run in ``run_dir`` on its ``split`` cells; write the results into ``output`` (default
    ``run_dir/eval``) and return the summary written to metrics.json.

    ``checkpoint`` defaults to the run's best (else final, else last), and the final checkpoint is scored
    too (``summary["final"]``); a given ``checkpoint`` is scored alone. ``adata`` / ``data_path`` replace
    the run's own data set (it must hold the same cells, as split.csv names them). ``progress``: a bar of the
    stages on a terminal or in a notebook (default: when there is one, core/progress.py)."""
    from core.progress import ProgressBar

    request = _Request(Path(run_dir), split, output, checkpoint, adata, data_path, top_k, max_cells, seed, device,
                       save_predictions, time.time())
    with ProgressBar(4, f"evaluating {request.run_dir.name}", unit="stage", enabled=progress) as bar:
        return _evaluate(request, bar)


@dataclass
class _Request:
    """What ``evaluate_run`` was asked (its arguments, as documented there) and when it started."""

    run_dir: Path
    split: str
    output: object
    checkpoint: object
    adata: object
    data_path: object
    top_k: int
    max_cells: int | None
    seed: int
    device: str | None
    save_predictions: bool
    started: float


def _evaluate(request: _Request, bar) -> dict:
    from core.config import load_config
    from core.infer import load_model, predict, resolve_checkpoint, run_mapping
    from core.runs import read_metrics

    run_dir, split, checkpoint, adata, data_path = (request.run_dir, request.split, request.checkpoint,
                                                    request.adata, request.data_path)
    seed, device, started = request.seed, request.device, request.started
    bar.update(0, stage="reading the data")
    cfg = load_config(run_dir / "config.yaml")
    ckpt = resolve_checkpoint(checkpoint or run_dir)
    split_of = read_split(run_dir)
    if split not in set(split_of):
        raise DataError(f"no cell of the run is in the '{split}' split (split.csv has {sorted(set(split_of))})")
    if adata is None:
        adata = run_data(cfg, data_path)
    mapping = run_mapping(cfg)
    if mapping.pert_col not in adata.obs:
        raise DataError(f"the data set has no obs column '{mapping.pert_col}'; evaluate on the run's own data")
    held_out = split_of.index[split_of == split]
    in_data = adata.obs_names.isin(held_out)
    if not in_data.any():
        raise DataError(f"none of the run's {split} cells is in this data set; evaluate on the run's own data")
    is_control = (adata.obs[mapping.pert_col].astype(str) == str(mapping.control_pert)).to_numpy()
    controls = adata.obs_names[in_data & is_control]
    if len(controls) == 0:
        raise DataError(f"the {split} split has no control ('{mapping.control_pert}') cells to predict from")
    log.info("predicting %d held-out control cells with %s", len(controls), ckpt)
    bar.update(1, stage="predicting")
    loaded = load_model(ckpt, device)  # once: the model predicts, and its gene decoder (if any) decodes
    predictions = predict(ckpt, adata, control_cells=controls.to_numpy(), seed=seed, device=device, loaded=loaded)

    keys = DataKeys(
        embed_key=mapping.embed_key,
        pert_col=mapping.pert_col,
        control_pert=str(mapping.control_pert),
        cell_type_key=mapping.cell_type_key,
        velocity_key=mapping.velocity_key,
        confidence_key=mapping.confidence_key,
        # the demo knows its true velocity in its latent space; no other data set does
        true_velocity_key=TRUE_VELOCITY_KEY if mapping.embed_key == "X_pca" else None,
    )
    settings = dict(eval_split=split, min_confidence=cfg.model.kwargs.velocity_min_confidence,
                    top_k=request.top_k, max_cells=request.max_cells, seed=seed)
    bar.update(2, stage="scoring the model and the baselines")
    evaluation = evaluate_predictions(predictions, adata, split_of, keys, **settings)
    genes, gene_table = gene_space(loaded[0], adata, predictions, keys, split_of, split)
    bar.update(3, stage="the final checkpoint")
    final = _final_checkpoint(run_dir, ckpt) if checkpoint is None else None
    best_step = _checkpoint_step(ckpt)
    final_summary = {"checkpoint": str(ckpt), "same_as_best": True, "step": best_step}
    if final is not None and best_step is not None and _checkpoint_step(final) == best_step:
        # best was kept at the last step: the final checkpoint holds the same weights
        final_summary["checkpoint"] = str(final)
        final = None
    if final is not None:
        log.info("predicting them again with the final checkpoint %s", final)
        final_predictions = predict(final, adata, control_cells=controls.to_numpy(), seed=seed, device=device)
        scored = evaluate_predictions(final_predictions, adata, split_of, keys, with_baselines=False, **settings)
        final_summary = {"checkpoint": str(final), "same_as_best": False, "step": _checkpoint_step(final),
                         "overall": scored.summary["overall"], "all_cells": scored.summary["all_cells"]}
    design = describe_design({"split": cfg.data.kwargs.split, "holdout": cfg.data.kwargs.holdout})
    for warning in design["warnings"]:
        log.warning("WARNING: %s", warning)
    summary = {
        "run": run_dir.name,
        "checkpoint": str(ckpt),
        "checkpoint_step": best_step,
        "data": str(data_path or cfg.data.kwargs.path or f"demo:{cfg.data.kwargs.dataset}"),
        "design": design,
        **evaluation.summary,
        "genes": genes,
        "final": final_summary,
        "stability": stability_summary(read_metrics(run_dir)),
        "evaluated_at": time.time(),
        "seconds": round(time.time() - started, 2),
    }
    out_dir = Path(request.output) if request.output is not None else run_dir / "eval"
    write_evaluation(out_dir, summary, evaluation.per_group, predictions if request.save_predictions else None,
                     gene_table)
    bar.update(4, stage="written")
    return summary


def gene_space(model, adata, predictions, keys: DataKeys, split_of, split: str, top_k: int = DEFAULT_GENE_TOP_K):
    """(metrics.json's "genes" entry, the per-gene table or None): predicted against observed log fold changes
    per cell type through the run's gene decoder (core.evaluation.genes), or the reason there is none."""
    import pandas as pd

    decoder, why = gene_decoder(adata, keys.embed_key, model)
    if decoder is None:
        log.info(why)
        return no_decoder_summary(why), None
    obs = adata.obs
    pert = obs[keys.pert_col].astype(str).to_numpy()
    cell_type = obs[keys.cell_type_key].astype(str).to_numpy()
    cell_split = pd.Series(split_of).astype(str).reindex(adata.obs_names).fillna("").to_numpy()
    is_control = pert == keys.control_pert
    matched = adata.obs_names.get_indexer(predictions.obs[PredictionKeys.matched_control].astype(str))
    pred_pert = predictions.obs[keys.pert_col].astype(str).to_numpy()
    z_pred = np.asarray(predictions.obsm[PredictionKeys.z_pred], dtype=np.float64)
    labels = sorted(set(pred_pert))
    groups = []
    for perturbation, kind in sorted(set(zip(pred_pert, cell_type[matched]))):
        rows = (pred_pert == perturbation) & (cell_type[matched] == kind)
        of_type = cell_type == kind
        groups.append({
            "label": kind if len(labels) == 1 else f"{perturbation} / {kind}",
            "perturbation": perturbation, "cell_type": kind, "z_pred": z_pred[rows],
            "control_rows": np.unique(matched[rows]),
            "real_rows": np.flatnonzero((pert == perturbation) & of_type & (cell_split == split)),
            "train_rows": np.flatnonzero((pert == perturbation) & of_type & (cell_split == "train")),
            "train_control_rows": np.flatnonzero(is_control & of_type & (cell_split == "train")),
        })
    embedding = np.asarray(adata.obsm[keys.embed_key], dtype=np.float64)
    return gene_evaluation(decoder, adata, embedding, groups, top_k)


def _final_checkpoint(run_dir: Path, best: Path) -> Path | None:
    """checkpoints/final.ckpt when it exists and is not the checkpoint already scored."""
    final = run_dir / "checkpoints" / "final.ckpt"
    if not final.is_file() or final.resolve() == Path(best).resolve():
        return None
    return final


def _checkpoint_step(path) -> int | None:
    """The training step a Lightning checkpoint was saved at (None if it does not say)."""
    from core.runs import load_checkpoint

    step = load_checkpoint(path).get("global_step")
    return int(step) if isinstance(step, int) else None
