"""``python -m core demo [--force] [--velocity]``: build (or rebuild) the demo data and print where it is."""

import time

COMMAND = "demo"
HELP = "generate the burn/sham demo and its pretraining atlas (cached in data/cache/ or $ST_DATA_CACHE)"


def add_arguments(parser):
    parser.add_argument("--force", action="store_true", help="regenerate even if the cached files exist")
    parser.add_argument("--velocity", action="store_true",
                        help="also compute and cache the demo's latent RNA velocity (load_demo(with_velocity=True))")


def run(args) -> int:
    from core.data.demo import ensure_demo, load_demo

    started = time.perf_counter()
    paths = ensure_demo(force=args.force)
    for name, path in paths.items():
        print(f"{name}: {path} ({path.stat().st_size / 1e6:.0f} MB)")
    print(f"ready in {time.perf_counter() - started:.1f} s")
    if args.velocity:
        started = time.perf_counter()
        adata = load_demo("burn_sham", with_velocity=True)
        print(f"velocity: obsm['velocity_pca'] for {adata.n_obs} cells, median confidence "
              f"{adata.obs['velocity_confidence'].median():.2f}, ready in {time.perf_counter() - started:.1f} s")
    return 0
