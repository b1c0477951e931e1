"""``python -m core export RUN --format arc --out DIR``: a run fine-tuned from an Arc State folder, written back
as a folder arc-state's ``state tx infer`` runs (core/arc/export.py). mHC runs are refused in one line."""

from pathlib import Path

COMMAND = "export"
HELP = "write a run as an Arc State folder (runs fine-tuned from an Arc folder, without mHC)"


def add_arguments(parser):
    parser.add_argument("run", help="a run name (in the runs folder) or a run folder")
    parser.add_argument("--format", choices=["arc"], required=True, help="arc: an Arc State run folder")
    parser.add_argument("--out", type=Path, required=True, help="a new (or empty) folder to write")


def run(args) -> int:
    from core.arc.export import export_arc
    from core.runs import resolve_run

    written = export_arc(resolve_run(args.run, allow_outside=True), args.out)
    print(f"wrote {written['folder']}: checkpoints/final.ckpt ({written['tensors']} tensors, LoRA merged), "
          f"config.yaml, var_dims.pkl, pert_onehot_map.pt ({', '.join(sorted(written['perturbations']))})"
          f"{', batch_onehot_map.torch' if written['batches'] else ''}")
    return 0
