"""What ``python -m core infer --model-dir DIR`` does when DIR is an Arc State folder (core/cli/infer.py asks)."""

from __future__ import annotations

import json

from core.arc.runtime import find_arc_folder, load_arc, report_lines
from core.errors import DataError


def infer_model_dir(args) -> int | None:
    """Run ``--sampling arc`` here and return its exit code; for our sampling point ``args.checkpoint`` at the
    folder, print its load report, leave the imported model in ``args.loaded`` and return None (the caller goes
    on with core.infer.predict)."""
    found = find_arc_folder(args.checkpoint or args.model_dir)
    if found is None:
        if args.sampling == "arc":
            raise DataError(f"--sampling arc reproduces arc-state's inference and needs an Arc State folder; "
                            f"{args.model_dir} is not one (no pert_onehot_map.pt or var_dims.pkl)")
        args.checkpoint = args.checkpoint or args.model_dir
        return None
    if args.adata is None:
        raise DataError("--adata is required with an Arc State folder (the folder holds no data set)")
    folder_path, checkpoint = found
    model, folder, report = load_arc(folder_path, checkpoint)
    if not args.quiet:
        for line in report_lines(report, folder):
            print(line)
    if args.sampling != "arc":
        from core.arc.runtime import arc_run_from

        args.checkpoint = str(folder.checkpoint)
        args.loaded = arc_run_from(model, folder, report)  # core.infer.predict takes it instead of loading again
        return None
    ignored = [flag for flag, value in (("--perturbation", args.perturbation), ("--split", args.split)) if value]
    if ignored:
        raise DataError(f"--sampling arc predicts every cell of --adata under its own label, as state tx infer does; "
                        f"{' and '.join(ignored)} do not apply (filter the file instead)")
    if args.device:
        model = model.to(args.device)
    return _infer_arc(args, model, folder, report)


def _infer_arc(args, model, folder, report) -> int:
    from core.arc.sampling import predict_arc, write_like_arc
    from core.data.io import read_h5ad
    from core.infer import write_predictions

    adata = read_h5ad(args.adata)
    pred = predict_arc(model, folder, adata, embed_key=args.embed_key, pert_col=args.pert_col,
                       control_pert=args.control_pert, celltype_col=args.celltype_col, batch_col=args.batch_col,
                       seed=42 if args.seed is None else args.seed, max_set_len=args.set_len, clip=args.arc_clip)
    out = write_like_arc(adata, pred, model.spec.output_space)
    out.uns["st_infer"]["load_report"] = json.dumps(report)
    path = write_predictions(out, args.output, args.adata)
    where = f"obsm['{pred.latent_key}']" if pred.latent_key else "X"
    counts = ", counts in obsm['X_hvg']" if pred.counts is not None and model.spec.output_space == "gene" else ""
    print(f"wrote {path}: {adata.n_obs} cells predicted in {pred.n_windows} windows (arc sampling, seed "
          f"{42 if args.seed is None else args.seed}); latent in {where}{counts}")
    for note in pred.notes:
        print(f"note: {note}")
    return 0
