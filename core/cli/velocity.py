"""``python -m core velocity --adata IN --output OUT``: RNA velocity projected into the latent space.

Writes a copy; the input file is never modified.
"""

from pathlib import Path

from core.errors import DataError

COMMAND = "velocity"
HELP = "compute scvelo RNA velocity projected into the latent embedding; writes a copy of the data"


def add_arguments(parser):
    parser.add_argument("--adata", required=True, type=Path, help="input .h5ad with spliced/unspliced layers")
    parser.add_argument("--output", required=True, type=Path, help="where to write the copy with velocity")
    parser.add_argument("--basis", default="pca", help="latent basis name: reads obsm['X_<basis>'] (default pca)")
    parser.add_argument("--embed-key", default=None, help="obsm key of the embedding, if not X_<basis>")
    parser.add_argument("--mode", default="stochastic", choices=["stochastic", "dynamical"])


def run(args) -> int:
    from core.data.io import read_h5ad
    from core.velocity import compute_velocity

    if args.output.resolve() == args.adata.resolve():
        raise DataError("--output must differ from --adata: the input file is never overwritten")
    adata = read_h5ad(args.adata)
    summary = compute_velocity(adata, basis=args.basis, embed_key=args.embed_key, mode=args.mode,
                               progress=lambda step, fraction: print(f"[{fraction:4.0%}] {step}", flush=True))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(args.output)
    print(f"wrote {args.output}: obsm['velocity_{args.basis}'] (latent units), obs['velocity_confidence']; "
          f"median confidence {summary['median_confidence']:.2f}")
    return 0
