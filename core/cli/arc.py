"""``python -m core arc DIR [--adata FILE ...]``: read an Arc State folder, print its load report and what it
expects, and check a data set against it (core/arc/check.py); exit 2 when the data cannot be used."""

from pathlib import Path

COMMAND = "arc"
HELP = "read an Arc State folder: load report, what it expects, and a check of your data against it"


def add_arguments(parser):
    parser.add_argument("model_dir", help="the Arc State run folder (config.yaml, var_dims.pkl, pert_onehot_map.pt)")
    parser.add_argument("--checkpoint", default=None, help="a .ckpt of the folder (default checkpoints/final.ckpt)")
    parser.add_argument("--adata", type=Path, default=None, help="a .h5ad to check against the folder")
    parser.add_argument("--embed-key", default=None, help="obsm key of the embedding (default: the model's)")
    parser.add_argument("--pert-col", default=None, help="obs column of the perturbation (default: the model's)")
    parser.add_argument("--control-pert", default=None, help="control label (default: the model's)")
    parser.add_argument("--batch-col", default=None, help="obs column of the batch (default: the model's)")


def run(args) -> int:
    from core.arc.check import check_data
    from core.arc.runtime import load_arc, report_lines

    _, folder, report = load_arc(args.model_dir, args.checkpoint)
    lines = report_lines(report, folder)
    for line in lines[:3] + [line for line in lines[3:] if not line.startswith("  loaded")]:
        print(line)
    if args.adata is None:
        return 0
    from core.data.io import read_h5ad

    findings = check_data(folder, read_h5ad(args.adata), args.embed_key, args.pert_col, args.control_pert,
                          args.batch_col)
    for level, text in findings:
        print(f"{level}: {text}")
    return 2 if any(level == "error" for level, _ in findings) else 0
