"""``python -m core demo [--force]``: build (or rebuild) the demo data and print where it is."""

from core.data.demo import ensure_demo

COMMAND = "demo"
HELP = "generate the burn/sham demo and its pretraining atlas (cached in data/cache/)"


def add_arguments(parser):
    parser.add_argument("--force", action="store_true", help="regenerate even if the cached files exist")


def run(args) -> int:
    for name, path in ensure_demo(force=args.force).items():
        print(f"{name}: {path}")
    return 0
