"""An Arc State folder as a model of ours: found from a folder or a checkpoint path, imported, described.

``core/infer.py`` asks ``arc_run_for_infer`` for (model, config, hyper-parameters) shaped like one of our own
runs, so that our sampling (the default) works on an imported model; ``--sampling arc`` uses
``core/arc/sampling.py`` instead. ``describe`` says what the folder expects of the data (embedding key and
dimension, output space, perturbations and batches it knows), for the CLI and the app.
"""

from __future__ import annotations

import json
from pathlib import Path

from core.arc.folder import ArcFolder, looks_like_arc_folder, read_arc_folder
from core.arc.importer import import_arc_model, summary
from core.errors import CheckpointError


def find_arc_folder(path) -> tuple[Path, Path | None] | None:
    """(folder, checkpoint or None) when ``path`` is an Arc folder or a .ckpt inside one; else None."""
    path = Path(path).expanduser()
    if path.is_dir():
        return (path, None) if looks_like_arc_folder(path) else None
    if not path.is_file():  # e.g. "demo": never the folder around the working directory
        return None
    for folder in (path.parent, path.parent.parent):
        if looks_like_arc_folder(folder):
            return folder, path
    return None


def load_arc(model_dir, checkpoint=None):
    """(model in eval mode, folder, load report)."""
    folder = read_arc_folder(model_dir, checkpoint)
    model, report = import_arc_model(folder)
    return model, folder, report


def describe(folder: ArcFolder) -> dict:
    hp = folder.hparams
    return {"kind": folder.kind, "embed_key": folder.embed_key, "input_dim": int(hp["input_dim"]),
            "output_space": hp.get("output_space"), "output_dim": int(hp["output_dim"]),
            "control": folder.control, "perturbations": sorted(folder.pert_map),
            "batches": sorted(folder.batch_map or {}), "cell_types": sorted(folder.cell_type_map or {}),
            "genes": int(hp["decoder_cfg"]["gene_dim"]) if hp.get("decoder_cfg") else None,
            "cell_set_len": int(hp.get("cell_set_len", 256))}


def report_lines(report: dict, folder: ArcFolder) -> list[str]:
    """The load report as printed lines: the summary, then every tensor's fate."""
    info = describe(folder)
    lines = [f"Arc folder {folder.path} ({', '.join(f'{k}: {v}' for k, v in folder.files.items())})",
             summary(report),
             f"expects obsm['{info['embed_key']}'] ({info['input_dim']}-d), output space {info['output_space']}, "
             f"control '{info['control']}', perturbations {info['perturbations']}"]
    lines += [f"note: {note}" for note in report.get("notes", [])]
    lines += [f"  loaded  {arc} -> {ours}" for arc, ours in report["loaded"].items()]
    lines += [f"  dropped {key}: {why}" for key, why in report["dropped"].items()]
    lines += [f"  merged  {key} into {into}" for key, into in report["merged"].items()]
    lines += [f"  rebuilt {key}: {why}" for key, why in report["rebuilt"].items()]
    return lines


def arc_run_for_infer(model_dir, checkpoint=None):
    """(model, Config, hp) as core.infer.load_model returns them for one of our runs."""
    return arc_run_from(*load_arc(model_dir, checkpoint))


def arc_run_from(model, folder: ArcFolder, report: dict):
    """(model, Config, hp) for an Arc model already imported (``load_arc``'s result), so that a caller that
    printed the load report does not import the checkpoint a second time."""
    from core.config import Config

    if model.spec.output_dim != model.spec.input_dim:
        raise CheckpointError(f"the model maps {model.spec.input_dim}-d input to {model.spec.output_dim}-d output; our "
                              "sampling predicts shifts in the input space, use --sampling arc for this model")
    if model.batch_embedding is not None and len(folder.batch_map) != model.spec.batch_dim:
        raise CheckpointError(f"the batch map has {len(folder.batch_map)} labels but the batch encoder "
                              f"{model.spec.batch_dim} rows; the map is not the one the model was trained with")
    cfg = Config()
    d = dict((folder.config.get("data") or {}).get("kwargs") or {})
    cfg.data.kwargs.embed_key = folder.embed_key
    for ours, arc in (("pert_col", "pert_col"), ("cell_type_key", "cell_type_key"), ("batch_col", "batch_col")):
        setattr(cfg.data.kwargs, ours, d.get(arc))
    cfg.data.kwargs.control_pert = folder.control
    cfg.model.kwargs.cell_set_len = model.spec.cell_set_len
    hp = {"pert_map": dict(folder.pert_map), "control": folder.control, "embed_dim": model.spec.input_dim,
          "batch_map": dict(folder.batch_map or {}) if model.batch_embedding is not None else {},
          "checkpoint": str(folder.checkpoint), "arc_load_report": json.dumps(report)}
    return model, cfg, hp
