"""``python -m core velocity --adata IN --output OUT``: RNA velocity projected into the latent space.

Writes a copy with the velocity keys (see core/velocity/pipeline.py); the input file is never modified.
"""

from pathlib import Path

from core.errors import DataError

COMMAND = "velocity"
HELP = "compute RNA velocity (scvelo) projected into the latent embedding; writes a copy of the data"


def add_arguments(parser):
    parser.add_argument("--adata", required=True, type=Path, help="input .h5ad with spliced/unspliced layers")
    parser.add_argument("--output", required=True, type=Path, help="where to write the copy with velocity")
    parser.add_argument("--basis", default="pca",
                        help="name of the latent basis: reads obsm['X_<basis>'], writes obsm['velocity_<basis>']")
    parser.add_argument("--embed-key", default=None, help="obsm key of the embedding, if not X_<basis>")
    parser.add_argument("--mode", default="stochastic", choices=["stochastic", "dynamical"])
    parser.add_argument("--engine", default="fast", choices=["fast", "scvelo"],
                        help="fast: our vectorised twin of scvelo's steps (default); scvelo: scvelo itself")
    parser.add_argument("--n-neighbors", type=int, default=30, help="neighbours of the kNN graph (default 30)")
    parser.add_argument("--n-top-genes", type=int, default=2000, help="highly variable genes kept (default 2000)")
    parser.add_argument("--dynamical-genes", type=int, default=100,
                        help="genes fitted in dynamical mode (the most expressed velocity genes; default 100)")
    parser.add_argument("--no-cache", action="store_true", help="recompute even if a cached result exists")


def run(args) -> int:
    from core.data.io import read_h5ad
    from core.velocity.pipeline import compute_velocity, save_with_velocity

    if args.output.expanduser().resolve() == args.adata.expanduser().resolve():
        raise DataError("--output must differ from --adata: the input file is never overwritten")
    adata = read_h5ad(args.adata)
    summary = compute_velocity(
        adata, basis=args.basis, embed_key=args.embed_key, mode=args.mode, engine=args.engine,
        n_neighbors=args.n_neighbors, n_top_genes=args.n_top_genes, dynamical_genes=args.dynamical_genes,
        use_cache=not args.no_cache,
        progress=lambda step, fraction: print(f"[{fraction:4.0%}] {step}", flush=True),
    )
    save_with_velocity(adata, args.output, source=args.adata)
    where = "from the cache" if summary["cached"] else f"in {summary['seconds']:.1f} s"
    print(f"wrote {args.output}: obsm['velocity_{args.basis}'] (latent units), obsm['velocity_{args.basis}_scvelo'] "
          f"(unit directions), obs['velocity_confidence'] (median {summary['median_confidence']:.2f}), "
          f"layers['velocity']; {summary['n_velocity_genes']} velocity genes, computed {where}")
    return 0
