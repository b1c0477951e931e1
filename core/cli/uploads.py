"""``python -m core uploads list|clean``: the app's saved uploads in ``<runs>/.uploads/`` (core/runs/uploads.py)."""

from __future__ import annotations

COMMAND = "uploads"
HELP = "list the app's saved uploads, or remove the oldest (all with --all), never one a running run reads"


def add_arguments(parser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="action", required=True)
    actions.add_parser("list", help="saved uploads, oldest first, with their sizes")
    clean = actions.add_parser("clean", help="remove the oldest saved uploads down to a total size")
    clean.add_argument("--max-bytes", default=None,
                       help="total to keep, e.g. 2G (default: $ST_UPLOADS_MAX_BYTES, else 5G)")
    clean.add_argument("--all", action="store_true", help="remove every saved upload no queued or running run reads")


def run(args) -> int:
    from core.memory_budget import human, parse_size
    from core.runs.uploads import evict, saved_files, uploads_dir

    if args.action == "list":
        files = saved_files()
        for path in files:
            print(f"{human(path.stat().st_size):>10}  {path.name}")
        print(f"{len(files)} files, {human(sum(p.stat().st_size for p in files))} in {uploads_dir()}")
        return 0
    limit = 0 if args.all else (parse_size(args.max_bytes, "--max-bytes") if args.max_bytes else None)
    removed = evict(limit)
    print(f"removed {len(removed)} files from {uploads_dir()}; {len(saved_files())} left")
    return 0
