"""``python -m core evaluate RUN [--split test] [--output DIR]``: score a run on its held-out cells.

Writes eval/metrics.json, eval/per_cell_type.csv and eval/predictions.h5ad into the run folder (or --output)
and prints the model's overall metrics (best and final checkpoint) next to every baseline and the real-vs-real
floor, the best entry of each row marked with * (see core/evaluation/heldout.py and table.py).
"""

from __future__ import annotations

import math
from pathlib import Path

COMMAND = "evaluate"
HELP = "score a trained run on its held-out cells against the baselines and the real-vs-real floor"

def add_arguments(parser) -> None:
    parser.add_argument("run", help="run name (in $ST_RUNS_DIR or ./runs) or the path of a run folder")
    parser.add_argument("--split", choices=["test", "val", "train"], default="test",
                        help="which cells to score (default: the held-out test split)")
    parser.add_argument("--output", type=Path, default=None, help="folder for the results (default: RUN/eval)")
    parser.add_argument("--checkpoint", default=None, help="a .ckpt to use instead of the run's best")
    parser.add_argument("--adata", type=Path, default=None,
                        help="the run's data set, if it moved (default: the path in its config, or the demo)")
    parser.add_argument("--top-k", type=int, default=10, help="latent dims compared by the top-k overlap")
    parser.add_argument("--max-cells", type=int, default=2000,
                        help="cells per side in the energy distance (a seeded subset beyond this)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prediction sets and subsets")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: CUDA, then MPS, then CPU)")
    parser.add_argument("--no-predictions", action="store_true", help="do not write eval/predictions.h5ad")


def final_step(step) -> str:
    return "?" if step is None else str(step)


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.4g}"


def gene_lines(genes: dict) -> list[str]:
    """The gene-space results in a few lines: the decoder, and the model's scores beside the no-model and the
    ceiling references (mean over cell types), or why there are none."""
    if not genes["decoder"]:
        return [f"genes: {genes['reason']}"]
    lines = [f"genes: {genes['decoder']['description']}"]
    k = genes["top_k"]
    for source, label in (("model", "model"), ("train_cells", "training cells (no model)"),
                          ("decoded_real", "real cells decoded (ceiling)")):
        scores = genes["overall"][source]
        lines.append(f"  {label:<28} top-{k} DE overlap {_fmt(scores['overlap_at_k'])}, overlap at N "
                     f"{_fmt(scores['overlap_at_n'])}, Pearson r of log2FC {_fmt(scores['pearson_lfc'])}")
    return lines


def run(args) -> int:
    from core.errors import ConfigError
    from core.evaluation.evaluate import evaluate_run
    from core.runs import resolve_run

    if args.top_k < 1 or args.max_cells < 2:
        raise ConfigError("--top-k must be >= 1 and --max-cells >= 2")
    run_dir = resolve_run(args.run, allow_outside=True)
    summary = evaluate_run(
        run_dir, split=args.split, output=args.output, checkpoint=args.checkpoint, data_path=args.adata,
        top_k=args.top_k, max_cells=args.max_cells, seed=args.seed, device=args.device,
        save_predictions=not args.no_predictions,
    )
    from core.evaluation.table import BEST_MARK, format_table, unavailable_lines

    overall = summary["overall"]
    cell_types = len(summary["per_cell_type"])
    print(f"{summary['run']}: {args.split} split, {overall['model']['n_pred']} predicted cells in {cell_types} "
          f"cell types (mean over cell types); design: {summary['design']['description']}")
    for warning in summary["design"]["warnings"]:
        print(f"  WARNING: {warning}")
    final = summary["final"]
    print(f"  checkpoints: best at step {final_step(summary.get('checkpoint_step'))}"
          + ("" if final["same_as_best"] else f", final at step {final_step(final.get('step'))}")
          + f"; {BEST_MARK} marks the best entry of each row (model or baseline; the floor is not a predictor)")
    for line in format_table(summary):
        print(line)
    for line in unavailable_lines(summary):
        print(f"  {line}")
    stability = summary["stability"]
    print(f"  training: grad-norm p50 {_fmt(stability['grad_norm_p50'])}, p95 {_fmt(stability['grad_norm_p95'])}, "
          f"max {_fmt(stability['grad_norm_max'])}; {stability['loss_spikes']} loss spikes in "
          f"{stability['n_steps']} steps")
    for reason in summary["skipped"].items():
        print(f"  skipped {reason[0]}: {reason[1]}")
    for line in gene_lines(summary["genes"]):
        print(f"  {line}")
    out = args.output or run_dir / "eval"
    tables = "per_cell_type.csv" + (", gene_lfc.csv" if summary["genes"]["decoder"] else "")
    print(f"wrote {out}/metrics.json and {tables}" + ("" if args.no_predictions else " and predictions.h5ad"))
    return 0
