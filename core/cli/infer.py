"""``python -m core infer --run NAME | --checkpoint CKPT [--adata IN] --output preds.h5ad``: predict perturbed cells.

``--model-dir DIR [--checkpoint CKPT]`` also takes an Arc State run folder (``state tx infer``'s flags); with
``--sampling arc`` sets and control draws are arc-state's own and the output keys are its (core/arc/sampling.py).

Flags follow Arc State's ``state tx infer`` (--embed-key --pert-col --control-pert --celltype-col --batch-col);
each defaults to what the run trained with. Without --adata the run's own data set (or the demo) is used. Writes
obsm X_pred and delta_z and obs matched_control (see core/infer.py); the input file is never written.
"""

from pathlib import Path

COMMAND = "infer"
HELP = "predict perturbed embeddings from control cells with a trained ST model; writes a new .h5ad"


def add_arguments(parser):
    parser.add_argument("--run", default=None, help="a run name in the runs folder ($ST_RUNS_DIR) or a run folder")
    parser.add_argument("--checkpoint", default=None, help="a .ckpt file or a run folder (best, else final ckpt)")
    parser.add_argument("--model-dir", default=None,
                        help="a run folder, ours or an Arc State one (config.yaml, var_dims.pkl, pert_onehot_map.pt)")
    parser.add_argument("--sampling", choices=["ours", "arc"], default="ours",
                        help="ours (default): sets of control cells per cell type; arc: arc-state 0.11.1's own draws")
    parser.add_argument("--arc-clip", action="store_true",
                        help="with --sampling arc: clip gene-space latents and counts to [0, 14] as arc-state does")
    parser.add_argument("--quiet", action="store_true", help="print only the output line (Arc's flag)")
    parser.add_argument("--adata", type=Path, default=None, help="input .h5ad (default: the run's own data)")
    parser.add_argument("--output", type=Path, required=True, help="where to write the predictions .h5ad")
    parser.add_argument("--embed-key", default=None, help="obsm key of the embedding (default: the run's)")
    parser.add_argument("--pert-col", default=None, help="obs column of the perturbation (default: the run's)")
    parser.add_argument("--control-pert", default=None, help="value of --pert-col marking control cells")
    parser.add_argument("--celltype-col", default=None, help="obs column of the cell type")
    parser.add_argument("--batch-col", default=None, help="obs column of the batch (mouse, plate)")
    parser.add_argument("--perturbation", action="append", default=None,
                        help="perturbation to predict (repeatable; default: every one the model knows)")
    parser.add_argument("--split", choices=["train", "val", "test"], default=None,
                        help="only the control cells of this split of the run (needs a run folder's split.csv)")
    parser.add_argument("--set-len", "--max-set-len", type=int, default=None, help="cells per set (default: the run's)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the sets (default 0; 42 with --sampling arc, as state tx infer)")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: CUDA, then MPS, then CPU)")


def run(args) -> int:
    import pandas as pd

    from core.errors import ConfigError, DataError
    from core.infer import predict, resolve_checkpoint, write_predictions
    from core.runs import resolve_run

    if args.run is not None:
        if args.checkpoint is not None or args.model_dir is not None:
            raise ConfigError("give the model once: --run NAME, --checkpoint CKPT or --model-dir DIR")
        args.checkpoint = resolve_run(args.run, allow_outside=True)
    if args.adata is not None and args.output.expanduser().resolve() == args.adata.expanduser().resolve():
        raise DataError("--output must differ from --adata: the input file is never overwritten")
    if args.checkpoint is None and args.model_dir is None:
        raise ConfigError("give the model: --run NAME (a run in the runs folder), --checkpoint CKPT, or --model-dir "
                          "DIR (ours or an Arc State folder)")
    if args.model_dir is not None:
        from core.arc.commands import infer_model_dir

        handled = infer_model_dir(args)
        if handled is not None:
            return handled
    args.seed = 0 if args.seed is None else args.seed
    adata = None
    if args.adata is not None:
        from core.data.io import read_h5ad

        adata = read_h5ad(args.adata)
    cells = None
    if args.split:
        ckpt = resolve_checkpoint(args.checkpoint)
        split_file = ckpt.parent.parent / "split.csv"
        if not split_file.is_file():
            raise DataError(f"--split needs the run's split.csv next to its checkpoints; none at {split_file}")
        split = pd.read_csv(split_file, dtype=str)
        cells = split.loc[split["split"] == args.split, "obs_name"].to_numpy()
    mapping = {"embed_key": args.embed_key, "pert_col": args.pert_col, "control_pert": args.control_pert,
               "cell_type_key": args.celltype_col, "batch_col": args.batch_col}
    predictions = predict(args.checkpoint, adata, control_cells=cells, perturbations=args.perturbation,
                          mapping=mapping, set_len=args.set_len, seed=args.seed, device=args.device,
                          loaded=getattr(args, "loaded", None))
    path = write_predictions(predictions, args.output, args.adata)
    info = predictions.uns["st_infer"]
    print(f"wrote {path}: {predictions.n_obs} predictions ({', '.join(info['perturbations'])}) in {info['n_sets']} "
          f"sets of {info['set_len']}; obsm X_pred, delta_z; obs matched_control")
    for note in info["notes"]:
        print(f"note: {note}")
    return 0
