"""``python -m core figures RUN --out DIR``: write a run's figures without the app (same builders)."""

from __future__ import annotations

import argparse
from pathlib import Path

FORMATS = ("png", "svg", "html")
COMMAND = "figures"
HELP = "export a run's figures (training curves, mHC mappings, Δz vs velocity) as PNG, SVG and HTML"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run name (in the runs folder) or path of a run folder")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the figures into")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS,
                        help="file formats (default: all three)")
    parser.add_argument("--basis", default="X_umap", help="2-D obsm key to draw Δz and v_z arrows on")
    parser.add_argument("--log-y", action="store_true", help="loss curves on a log scale")
    parser.add_argument("--bundle", action="store_true",
                        help="also write <run>_bundle.zip (figures, metrics CSV, config, predictions)")


def load_run_dataset(run_dir: Path):
    """The data set a run trained on (core.data.datasets decides which; a file stays on disk, backed)."""
    from core.data.datasets import load_run_data, run_data
    from core.runs import read_config

    return load_run_data(run_data(read_config(run_dir)), backed=True)


def run(args: argparse.Namespace) -> int:
    from core.figures.export import run_bundle, write_figures
    from core.figures.run import run_figures
    from core.runs import resolve_run

    run_dir = resolve_run(args.run, allow_outside=True)
    adata = load_run_dataset(run_dir) if (run_dir / "eval" / "predictions.h5ad").is_file() else None
    figures = run_figures(run_dir, adata=adata, basis_key=args.basis, log_y=args.log_y)
    written = write_figures(figures, args.out, formats=args.formats)
    if args.bundle:
        bundle = Path(args.out) / f"{run_dir.name}_bundle.zip"
        bundle.write_bytes(run_bundle(run_dir, figures))
        written.append(bundle)
    print(f"wrote {len(written)} files for {len(figures)} figures of {run_dir.name} to {args.out}")
    if adata is None:
        print("note: no eval/predictions.h5ad, so no Δz-vs-velocity figures; run 'python -m core evaluate "
              f"{run_dir.name}' first")
    return 0
