"""``python -m core experiment --arms base,+mhc --seeds 3 [key=value ...]``: a paired ablation with a verdict.

Runs every arm with seeds 0..k-1 (the same seeds, hence the same splits, for every arm), each an ordinary
run folder in the runs folder, as many at once as there are CPUs (or GPUs); evaluates them; and prints, per
metric, the paired difference of each arm to the reference arm (the first) with a 95% t interval and a
verdict. Running the same command again resumes: finished runs are skipped. Examples:
    python -m core experiment --arms base,+mhc --seeds 3
    python -m core experiment --arms stability --seeds 3          # the lr ladder, +mhc vs base at each lr
    python -m core experiment --arms base --arm beta0 model.kwargs.use_velocity_alignment=true \\
        model.kwargs.velocity_beta=0 --seeds 3 data.kwargs.split=cell_type data.kwargs.holdout=Fibroblast
"""

from __future__ import annotations

COMMAND = "experiment"
HELP = "run arms x seeds (e.g. base vs +mhc) and report paired differences with a verdict"


def add_arguments(parser) -> None:
    parser.add_argument("--arms", default=None,
                        help="named arms, comma-separated: base, +mhc, +velocity, +mhc+velocity, or stability "
                             "(an lr ladder); the first is the reference (default: base,+mhc)")
    parser.add_argument("--arm", nargs="+", action="append", metavar=("NAME", "KEY=VALUE"), default=None,
                        help="a custom arm: a name and its overrides (repeatable)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per arm: 0..k-1 (default 3)")
    parser.add_argument("--name", default=None, help="experiment name (default: from the arms); reuse it to resume")
    parser.add_argument("--jobs", type=int, default=None,
                        help="runs at once (default: the CPU count, or one per GPU)")
    parser.add_argument("--no-demo-base", action="store_true",
                        help="do not fine-tune the demo base by default (train from scratch unless overridden)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="settings shared by every arm, e.g. training.max_epochs=3 data.kwargs.split=batch")


def run(args) -> int:
    from core.errors import ConfigError
    from core.experiment.arms import DEFAULT_COMMON, default_name, parse_arms
    from core.experiment.results import markdown
    from core.experiment.runner import ExperimentSpec, experiment_dir, run_experiment

    if args.seeds < 1 or args.seeds > 100:
        raise ConfigError(f"--seeds must be between 1 and 100; got {args.seeds}")
    if args.jobs is not None and args.jobs < 1:
        raise ConfigError(f"--jobs must be >= 1; got {args.jobs}")
    # with only custom arms, base is their reference
    arms = parse_arms(args.arms if args.arms is not None else ("base" if args.arm else "base,+mhc"), args.arm)
    common = [*([] if args.no_demo_base else DEFAULT_COMMON), *args.overrides]
    spec = ExperimentSpec(args.name or default_name(arms), arms, list(range(args.seeds)), common)
    results = run_experiment(spec, jobs=args.jobs)
    print()
    print(markdown(results), end="")
    folder = experiment_dir(spec.name)
    from core.figures.experiment import paired_dots
    from core.figures.export import figure_html
    from core.runs import atomic_write_bytes

    atomic_write_bytes(folder / "paired_dots.html", figure_html(paired_dots(results)))
    counts = results["counts"]
    print(f"\n{results['seconds']:.0f} s with {results['parallel']} at a time ({counts['trained']} trained, "
          f"{counts['resumed']} resumed, {counts['evaluated']} evaluated, {counts['skipped']} already done, "
          f"{counts['failed']} failed); wrote {folder}/results.json, results.md and paired_dots.html")
    return 1 if results["failed"] else 0
