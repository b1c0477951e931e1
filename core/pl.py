"""Plotting for notebooks (scanpy's ``pl``): the figures the app shows, as plotly figures that render inline in
Jupyter. Each function returns a dict name -> figure, the names the app's Export page and ``python -m core
figures`` use for the files."""

from __future__ import annotations

import os

from core.runs.handle import Run


def _run(run) -> Run:
    return run if isinstance(run, Run) else Run(run)


def training(run: Run | str | os.PathLike, log_y: bool = False) -> dict:
    """Loss curves (raw and smoothed), gradient norm, λ_t and cos(Δz, v_z) over the steps of a run."""
    from core.figures.training import training_figures

    return dict(training_figures(_run(run).metrics, log_y=log_y))


def mhc(run: Run | str | os.PathLike, snapshot: int = -1) -> dict:
    """H_res heatmaps, row/column-sum errors, composite gain, H_pre/H_post of an mHC run, at its ``snapshot``
    (index into the run's snapshots by step; -1 the last). Empty for a run without mHC."""
    from core.figures.mhc import mhc_figures

    snapshots = _run(run).snapshots
    return mhc_figures(snapshots, snapshot) if snapshots else {}


def delta_velocity(run: Run | str | os.PathLike, adata=None, basis: str = "X_umap") -> dict:
    """Δz against velocity for an evaluated run: cos(Δz, v_z) per cell type, ‖Δz‖ against ‖v_z‖, and arrows on
    ``basis``. ``adata``: the run's data set (default: loaded as the run used it)."""
    from core.data.datasets import load_run_data, run_data
    from core.figures.run import data_kwargs, delta_velocity_figures

    run = _run(run)
    predictions = run.predictions
    if predictions is None:
        return {}
    adata = adata if adata is not None else load_run_data(run_data(run.config))
    return delta_velocity_figures(predictions, adata, data_kwargs(run.config), basis)


def genes(run: Run | str | os.PathLike) -> dict:
    """Genes of an evaluated run: the top-k DE gene overlap per cell type, and per cell type the predicted
    against the observed log2 fold change of every gene (empty before ``evaluate``; one message figure when the
    run has no decoder to genes, saying why)."""
    from core.figures.genes import gene_figures, read_gene_table

    run = _run(run)
    summary = run.evaluation
    return gene_figures(summary, read_gene_table(run.path)) if summary else {}


def compare(runs, column: str = "loss") -> dict:
    """Runs side by side: overlaid ``column`` curves and, for runs that differ only in their seed, mean ± spread."""
    from core.figures.compare import group_by_configuration, overlaid_curves, seed_band_curves

    runs = [_run(r) for r in runs]
    metrics = {r.name: r.metrics for r in runs}
    groups = group_by_configuration({r.name: r.config for r in runs})
    return {f"{column}_overlaid": overlaid_curves(metrics, column),
            f"{column}_over_seeds": seed_band_curves(metrics, groups, column)}


def experiment(results) -> dict:
    """An experiment's figures (paired dot plots; held-out ED against cos(Δz, v_z) over λ with the baselines):
    ``results`` is what ``core.run_experiment`` returned (its ``attrs["results"]``), a results dict, or an
    experiment folder holding results.json."""
    import json
    from pathlib import Path

    from core.figures.experiment import experiment_figures

    if hasattr(results, "attrs") and "results" in getattr(results, "attrs", {}):
        results = results.attrs["results"]
    elif isinstance(results, (str, os.PathLike)):
        results = json.loads((Path(results) / "results.json").read_text(encoding="utf-8"))
    return experiment_figures(results)
