"""The Python API: the few functions a notebook or a script needs, the same calls the app's buttons and the
command line make. Import them from ``core``:

    import core
    adata = core.load("demo")                        # the burn/sham demo (or a path to your .h5ad)
    core.rna_velocity(adata)                         # RNA velocity into the embedding's space (keys below)
    run = core.train(["model.init_from=demo", "model.kwargs.use_mhc=true"], name="st-lora-mhc")
    core.evaluate(run)                               # held-out metrics, model next to its baselines
    core.pl.training(run)["loss"]                    # the app's figures, as plotly figures

AnnData keys: ``rna_velocity`` writes ``layers["velocity"]``, ``obsm["velocity_<basis>"]`` (v_z, the velocity in
the latent space ``obsm["X_<basis>"]``), ``obs["velocity_confidence"]`` and ``uns["velocity_params"]``
(core/velocity/pipeline.py). ``predict`` returns a new AnnData with ``obsm["X_pred"]``, ``obsm["delta_z"]`` and
``obs["matched_control"]`` (core/infer.py). ``load`` and ``predict`` never write to their input.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from core.runs.handle import Run


def load(source: str | os.PathLike = "demo", *, with_velocity: bool = False, backed: bool = False):
    """An AnnData: ``"demo"`` (the burn/sham demo, built once and cached; ``with_velocity`` adds its RNA velocity),
    ``"atlas"`` (the demo pretraining atlas), or the path of an .h5ad file (``backed=True`` keeps X on disk)."""
    from core.data.datasets import load_run_data, run_data

    text = os.fspath(source)
    if text in ("demo", "burn_sham", "atlas"):  # the same rule as a run's data set (the atlas has no velocity)
        return load_run_data(run_data({"dataset": "atlas" if text == "atlas" else "burn_sham"}, with_velocity))
    return load_run_data(run_data({"path": text}), backed=backed)


def rna_velocity(adata, *, basis: str = "pca", embed_key: str | None = None, mode: str = "stochastic",
             copy: bool = False, progress: bool | None = None, **options):
    """Compute RNA velocity from ``layers["spliced"]``/``["unspliced"]`` and project it into ``obsm["X_<basis>"]``
    (or ``embed_key``), writing the keys in this module's docstring. Returns None, or the new AnnData when
    ``copy``. ``options``: n_neighbors, n_top_genes, engine ("fast" or "scvelo"), use_cache."""
    from core.progress import ProgressBar
    from core.velocity.pipeline import compute_velocity

    target = adata.copy() if copy else adata
    with ProgressBar(1.0, "velocity", unit="", enabled=progress) as bar:
        compute_velocity(target, basis=basis, embed_key=embed_key, mode=mode,
                         progress=lambda step, fraction: bar.update(round(fraction, 3), step=step), **options)
    return target if copy else None


def train(overrides: Sequence[str] | None = None, *, config=None, name: str | None = None,
          preset: str | None = None, progress: bool | None = None) -> Run:
    """Train in this process and return the finished run. ``overrides``: ``key=value`` strings as on the command
    line (``["model.init_from=demo", "model.kwargs.use_mhc=true"]``); ``config``: a YAML path or a
    ``core.config.Config``; ``name``: the run's name in the runs folder. A progress bar shows in a notebook or a
    terminal. The run appears in the app and in ``python -m core runs list`` like any other."""
    import copy

    from core.config import Config, load_config, validate_config
    from core.errors import ConfigError
    from core.training.run import train as train_run

    if isinstance(config, Config):
        if overrides or preset:
            raise ConfigError("give either a Config or key=value overrides (with a YAML path or none), not both")
        cfg = copy.deepcopy(config)  # the trainer records resolved keys in it; the caller's object stays as given
        if name:
            cfg.run.name = name
        validate_config(cfg)
    else:
        cfg = load_config(config, [*(overrides or []), *([f"run.name={name}"] if name else [])], preset=preset)
    return Run(train_run(cfg, progress=progress))


def evaluate(run: Run | str | os.PathLike, *, split: str = "test", progress: bool | None = None, **options):
    """Evaluate a run on its held-out ``split`` and return the overall table: one row per method (the model and
    its baselines), one column per metric. Also writes ``eval/`` in the run folder (``run.evaluation``).
    ``options``: checkpoint, adata, top_k, max_cells, seed, device (core.evaluation.evaluate.evaluate_run)."""
    import pandas as pd

    from core.evaluation.evaluate import evaluate_run

    run = run if isinstance(run, Run) else Run(run)
    summary = evaluate_run(run.path, split=split, progress=progress, **options)
    return pd.DataFrame(summary["overall"]).T.rename_axis("method")


def predict(model: Run | str | os.PathLike, adata=None, **options):
    """Predicted burn cells for the control cells of ``adata`` (default: the run's own data) from a run, a run
    folder or a checkpoint: a new AnnData (keys in this module's docstring). ``options``: perturbations,
    control_cells, mapping, set_len, seed, device (core.infer.predict)."""
    from core.infer import predict as predict_cells

    return predict_cells(model.path if isinstance(model, Run) else model, adata, **options)


def run_experiment(arms: str = "base,+mhc", seeds: int = 3, overrides: Sequence[str] = (), *,
                   name: str | None = None, jobs: int | None = None, demo_base: bool = True,
                   root: str | os.PathLike | None = None, progress: bool | None = None, launcher: str = "local"):
    """A paired ablation, as ``python -m core experiment``: every arm (``base``, ``+mhc``, ``+velocity``,
    ``+mhc+velocity``, ``stability``, the lr ladder, or ``lambda``, the velocity-weight ladder) with seeds
    0..seeds-1, the same seeds and splits for every arm, as ordinary runs, evaluated; resumable by name. Returns
    one row per (arm, metric): the paired difference to the reference arm, its 95% t interval and the verdict;
    the full results are in ``table.attrs["results"]`` and in the experiment folder (``table.attrs["folder"]``).
    ``overrides`` apply to every arm; ``root`` is the runs folder (default ``$ST_RUNS_DIR`` or runs/);
    ``launcher="slurm"`` submits the runs through submitit."""
    import pandas as pd

    from core.experiment.arms import DEFAULT_COMMON, parse_arms
    from core.experiment.runner import ExperimentSpec, experiment_dir
    from core.experiment.runner import run_experiment as run_spec

    parsed = parse_arms(arms, None)
    spec = ExperimentSpec(name or "-vs-".join(a.slug for a in parsed)[:80], parsed, list(range(int(seeds))),
                          [*(DEFAULT_COMMON if demo_base else []), *overrides])
    results = run_spec(spec, root=root, jobs=jobs, log=lambda line: None, progress=progress, launcher=launcher)
    table = pd.DataFrame(results["comparisons"])
    table.attrs.update(results=results, folder=experiment_dir(spec.name, root))
    return table


def export(figures: dict, out_dir: str | os.PathLike, formats: Sequence[str] = ("png", "svg", "html")) -> list:
    """Write ``figures`` (a dict name -> plotly figure, as ``core.pl`` returns) to ``out_dir`` as ``<name>.<fmt>``,
    as the app's Export page does (PNG and SVG need Chromium; HTML is self-contained). Returns the paths."""
    from core.figures.export import write_figures

    return write_figures(figures, out_dir, formats=tuple(formats))


def runs(root: str | os.PathLike | None = None) -> list[Run]:
    """Every run in the runs folder, newest first."""
    from core.runs.reader import list_runs

    return [Run(entry["path"]) for entry in list_runs(root)]
