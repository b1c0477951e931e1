"""``python -m core runs list|status|cancel|resume|resume-info|tag|delete|clone``: the run folders, as the app
sees them."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

COMMAND = "runs"
HELP = ("list runs, show a run's status, cancel a run, resume an interrupted one (or show where it would resume), "
        "tag, delete or clone one")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root", type=Path, default=None, help="runs folder (default: $ST_RUNS_DIR, else ./runs)"
    )
    actions = parser.add_subparsers(dest="action", metavar="action", required=True)
    actions.add_parser("list", help="every run, newest first")
    for name, text in (
        ("status", "a run's status.json, with 'interrupted' when its process is gone"),
        ("cancel", "stop a run (STOP file, then SIGTERM to its process group after the grace period)"),
        ("resume", "continue an interrupted, failed or cancelled run from its last checkpoint, in the background"),
        ("resume-info", "the last checkpoint of a run, the step it holds and the command that resumes it"),
    ):
        sub = actions.add_parser(name, help=text)
        sub.add_argument("run", help="run name (or path of a run folder)")
        if name == "cancel":
            sub.add_argument("--grace", type=float, default=2.0, help="seconds to wait before SIGTERM")
    tag = actions.add_parser("tag", help="replace a run's tags (none: clear them)")
    tag.add_argument("run", help="run name")
    tag.add_argument("tags", nargs="*", help="labels, e.g. baseline 'best so far'")
    delete = actions.add_parser("delete", help="delete a finished run's folder (refused while it runs)")
    delete.add_argument("run", help="run name (inside the runs folder)")
    clone = actions.add_parser("clone", help="launch a new run with a run's settings and some changes")
    clone.add_argument("run", help="run name (or path of a run folder)")
    clone.add_argument("changes", nargs="*", metavar="key=value", help="e.g. training.seed=1")
    clone.add_argument("--name", default=None, help="name of the new run (default: <run>-clone)")


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _list(root) -> int:
    from core.paths import runs_root
    from core.runs import list_runs

    found = list_runs(root)
    if not found:
        print(f"no runs in {root or runs_root()}")
        return 0
    now = time.time()
    print(f"{'name':<32} {'state':<12} {'progress':>8} {'step':>7} {'age':>8}  settings")
    for run in found:
        status = run["status"]
        progress = status.get("progress")
        progress = f"{100 * progress:.0f}%" if isinstance(progress, (int, float)) else "-"
        step = status.get("step")
        settings = " ".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in run["summary"].items())
        print(
            f"{run['name']:<32} {run['state']:<12} {progress:>8} {step if step is not None else '-':>7} "
            f"{_age(now - run['created']):>8}  {settings}"
        )
    return 0


def _resume_info(run_dir: Path) -> dict:
    from core.runs import read_status

    status = read_status(run_dir)
    checkpoints = run_dir / "checkpoints"
    last = checkpoints / "last.ckpt"
    info = {
        "run": str(run_dir),
        "state": status["state"],
        "last_step": status.get("step"),
        "checkpoint": str(last) if last.is_file() else None,
        # a name starting with "." is a checkpoint being written (core.io.atomic's temp file)
        "checkpoints": (sorted(p.name for p in checkpoints.glob("*.ckpt") if not p.name.startswith("."))
                        if checkpoints.is_dir() else []),
    }
    if info["checkpoint"] is None:
        info["note"] = "no last.ckpt yet: resuming starts the run again from the beginning"
    info["command"] = (f"python -m core runs resume {run_dir}   (runs: python -m core train --config "
                       f"{run_dir / 'config.yaml'} run.dir={run_dir} training.resume=true)")
    return info


def run(args) -> int:
    from core.runs import cancel_run, read_status, resolve_run, resume_run

    if args.action == "list":
        return _list(args.root)
    if args.action in ("tag", "delete", "clone"):
        return _admin(args)
    run_dir = resolve_run(args.run, args.root, allow_outside=True)
    if args.action == "status":
        status = read_status(run_dir)
        print(json.dumps(status, indent=2, default=str))
        return 0
    if args.action == "cancel":
        status = cancel_run(run_dir, grace_s=args.grace)
        print(f"{run_dir.name}: {status.get('message') or status['state']}")
        return 0
    if args.action == "resume":
        resume_run(run_dir)
        print(f"{run_dir.name}: resuming in the background (output in {run_dir / 'log.txt'}); follow it with "
              f"'python -m core runs status {run_dir.name}'")
        return 0
    print(json.dumps(_resume_info(run_dir), indent=2))
    return 0


def _admin(args) -> int:
    from core.runs import resolve_run
    from core.runs.admin import clone_run, delete_run, set_tags

    # delete only inside the runs folder: a path typo must not remove some other folder
    run_dir = resolve_run(args.run, args.root, allow_outside=args.action == "clone")
    if args.action == "tag":
        tags = set_tags(run_dir, args.tags)
        print(f"{run_dir.name}: tags {tags or 'cleared'}")
    elif args.action == "delete":
        delete_run(run_dir)
        print(f"{run_dir.name}: deleted")
    else:
        new = clone_run(run_dir, args.changes, args.name or f"{run_dir.name}-clone")
        print(f"{new.name}: launched with the settings of {run_dir.name} and {args.changes or 'no changes'}; "
              f"follow it with 'python -m core runs status {new.name}'")
    return 0
