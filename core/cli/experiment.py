"""``python -m core experiment --arms base,+mhc --seeds 3 [key=value ...]``: a paired ablation with a verdict.

Runs every arm with seeds 0..k-1 (the same seeds, hence the same splits, for every arm), each an ordinary
run folder in the runs folder, as many at once as there are CPUs (or GPUs); evaluates them; and prints, per
metric, the paired difference of each arm to the reference arm (the first) with a 95% t interval and a
verdict. Running the same command again resumes: finished runs are skipped. ``--launcher slurm`` submits
each run as a Slurm job through submitit instead (core/experiment/cluster.py). Examples:
    python -m core experiment --arms base,+mhc --seeds 3
    python -m core experiment --arms stability --seeds 3          # the lr ladder, +mhc vs base at each lr
    python -m core experiment --arms lambda --seeds 3             # velocity weights: ED against cos(dz, v_z)
    python -m core experiment --arms base --arm beta0 model.kwargs.use_velocity_alignment=true \\
        model.kwargs.velocity_beta=0 --seeds 3 data.kwargs.split=cell_type data.kwargs.holdout=Fibroblast
"""

from __future__ import annotations

COMMAND = "experiment"
HELP = "run arms x seeds (e.g. base vs +mhc) and report paired differences with a verdict"


def add_arguments(parser) -> None:
    parser.add_argument("--arms", default=None,
                        help="named arms, comma-separated: base, +mhc, +velocity, +mhc+velocity, or stability "
                             "(an lr ladder) or lambda (a velocity-weight ladder); the first is the reference "
                             "(default: base,+mhc)")
    parser.add_argument("--arm", nargs="+", action="append", metavar=("NAME", "KEY=VALUE"), default=None,
                        help="a custom arm: a name and its overrides (repeatable)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per arm: 0..k-1 (default 3)")
    parser.add_argument("--name", default=None, help="experiment name (default: from the arms); reuse it to resume")
    parser.add_argument("--jobs", type=int, default=None,
                        help="runs at once (default: the CPU count, or one per GPU)")
    parser.add_argument("--launcher", choices=("local", "slurm", "submitit-local"), default="local",
                        help="local: processes of this machine (default); slurm: one Slurm job per run through "
                             "submitit (the runs folder must be shared with the nodes); submitit-local: the same "
                             "jobs as local processes through submitit, to try a cluster setup")
    parser.add_argument("--slurm-partition", default=None, help="Slurm partition (with --launcher slurm)")
    parser.add_argument("--slurm-time", type=int, default=60, metavar="MINUTES",
                        help="time limit per run's job in minutes (default 60)")
    parser.add_argument("--slurm-cpus", type=int, default=4, help="CPUs per run's job (default 4)")
    parser.add_argument("--slurm-gpus", type=int, default=0, help="GPUs per run's job (default 0)")
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
    from core.experiment.cluster import ClusterOptions

    if min(args.slurm_time, args.slurm_cpus) < 1 or args.slurm_gpus < 0:
        raise ConfigError("--slurm-time and --slurm-cpus must be >= 1 and --slurm-gpus >= 0")
    cluster = ClusterOptions(args.slurm_partition, args.slurm_time, args.slurm_cpus, args.slurm_gpus)
    results = run_experiment(spec, jobs=args.jobs, launcher=args.launcher, cluster=cluster)
    print()
    print(markdown(results), end="")
    folder = experiment_dir(spec.name)
    from core.figures.experiment import experiment_figures
    from core.figures.export import figure_html
    from core.runs import atomic_write_bytes

    figures = experiment_figures(results)
    for name, figure in figures.items():
        atomic_write_bytes(folder / f"{name}.html", figure_html(figure))
    counts = results["counts"]
    print(f"\n{results['seconds']:.0f} s with {results['parallel']} at a time ({counts['trained']} trained, "
          f"{counts['resumed']} resumed, {counts['evaluated']} evaluated, {counts['skipped']} already done, "
          f"{counts['failed']} failed); wrote {folder}/results.json, results.md, "
          f"{', '.join(f'{name}.html' for name in figures)}")
    return 1 if results["failed"] else 0
