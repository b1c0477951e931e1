"""An experiment's results: per arm and seed the metrics of its evaluation, per compared arm the paired
difference to its reference with a verdict, and the baselines beside them; written as results.json and
results.md in the experiment folder.

Metrics (``METRICS``) are read from each run's eval/metrics.json: the model's overall values (mean over
held-out cell types) at its best checkpoint and at its final one (cos(dz, true v) only on the demo, which
knows its true velocity), and two training-stability figures. The
baselines do not depend on the arm (same seed, same split), so they are reported once per seed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from core.evaluation.baselines import FLOOR, PREDICTORS
from core.evaluation.heldout import HIGHER_IS_BETTER
from core.evaluation.report import json_ready
from core.evaluation.table import LABELS
from core.experiment.stats import paired_difference, verdict
from core.runs import atomic_write_json, atomic_write_text

# (key, source, label, higher is better): source best / final checkpoint, or the run's stability summary
METRICS = (
    ("energy_distance", "best", "held-out ED", False),
    ("energy_distance", "final", "held-out ED (final ckpt)", False),
    ("pearson_delta", "best", "Pearson delta", True),
    ("mae_mean", "best", "MAE of means", False),
    ("top_k_overlap", "best", "top-k overlap", True),
    ("cos_delta_v", "best", "cos(dz, v_z)", True),
    ("cos_delta_v", "final", "cos(dz, v_z) (final ckpt)", True),
    ("cos_delta_true_v", "best", "cos(dz, true v)", True),
    ("cos_delta_true_v", "final", "cos(dz, true v) (final ckpt)", True),
    ("grad_norm_p95", "stability", "grad-norm p95", None),
    ("loss_spikes", "stability", "loss spikes", False),
    ("failed", "state", "run failed (e.g. diverged)", False),
)


def metric_id(key: str, source: str) -> str:
    return key if source == "best" else f"{key}@{source}"


def _value(summary: dict, key: str, source: str):
    if source == "stability":
        value = (summary.get("stability") or {}).get(key)
    elif source == "final":
        final = summary.get("final") or {}
        scores = summary.get("overall", {}) if final.get("same_as_best", True) else final.get("overall", {})
        value = scores.get("model", {}).get(key)
    else:
        value = summary.get("overall", {}).get("model", {}).get(key)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def read_job(job) -> dict:
    """One (arm, seed) record: its state, metric values and baselines (None where undefined)."""
    record = {"arm": job.arm.name, "seed": job.seed, "run": job.run_name, "state": job.state,
              "message": job.message, "metrics": {}, "baselines": {}, "design": None}
    # a failed run (a NaN loss at a high learning rate) is an outcome of its arm, not a missing value
    record["metrics"]["failed@state"] = {"done": 0.0, "failed": 1.0}.get(job.state)
    path = Path(job.run_dir) / "eval" / "metrics.json"
    if job.state != "done" or not path.is_file():
        return record
    summary = json.loads(path.read_text(encoding="utf-8"))
    record["design"] = (summary.get("design") or {}).get("description")
    for key, source, _, _ in METRICS:
        if source != "state":
            record["metrics"][metric_id(key, source)] = _value(summary, key, source)
    overall = summary.get("overall", {})
    for method in (*PREDICTORS, FLOOR):
        if method in overall:
            record["baselines"][method] = {
                key: (v if isinstance(v, (int, float)) and math.isfinite(v) else None)
                for key, v in overall[method].items() if key in HIGHER_IS_BETTER
            }
    return record


def velocity_weight(overrides: list[str]) -> float:
    """The velocity loss weight lambda an arm trains with: 0 when velocity alignment is off."""
    from core.config import load_config

    m = load_config(overrides=list(overrides)).model.kwargs
    return float(m.velocity_lambda) if m.use_velocity_alignment else 0.0


def _mean_sd(values: list) -> dict:
    finite = np.array([v for v in values if v is not None], dtype=np.float64)
    return {"n": int(finite.size), "mean": float(finite.mean()) if finite.size else None,
            "sd": float(finite.std(ddof=1)) if finite.size > 1 else None}


def analyse(spec, jobs) -> dict:
    records = [read_job(job) for job in jobs]
    by_arm = {arm.name: {r["seed"]: r for r in records if r["arm"] == arm.name} for arm in spec.arms}
    seeds = list(spec.seeds)
    arms = {}
    for arm in spec.arms:
        arms[arm.name] = {metric_id(k, s): _mean_sd([by_arm[arm.name][seed]["metrics"].get(metric_id(k, s))
                                                     for seed in seeds]) for k, s, _, _ in METRICS}
    comparisons = []
    for arm in spec.arms:
        if not arm.reference:
            continue
        for key, source, label, higher in METRICS:
            mid = metric_id(key, source)
            values = [by_arm[arm.name][seed]["metrics"].get(mid) for seed in seeds]
            reference = [by_arm[arm.reference][seed]["metrics"].get(mid) for seed in seeds]
            diff = paired_difference(values, reference)
            comparisons.append({"arm": arm.name, "reference": arm.reference, "metric": mid, "label": label,
                                "higher_is_better": higher, **diff.to_dict(),
                                "verdict": verdict(arm.name, arm.reference, label, diff, higher)})
    # Baselines per seed come from any arm that was evaluated on that seed (they do not depend on the arm).
    baselines = {}
    for method in (*PREDICTORS, FLOOR):
        per_metric = {}
        for key in HIGHER_IS_BETTER:
            values = []
            for seed in seeds:
                found = next((r["baselines"][method].get(key) for r in records
                              if r["seed"] == seed and method in r["baselines"]), None)
                values.append(found)
            per_metric[key] = _mean_sd(values)
        baselines[method] = per_metric
    designs = sorted({r["design"] for r in records if r["design"]})
    return {"spec": spec.to_dict(), "design": designs, "records": records, "arms": arms,
            "velocity_weight": {arm.name: velocity_weight([*spec.common, *arm.overrides]) for arm in spec.arms},
            "comparisons": comparisons, "baselines": baselines,
            "failed": [f"{r['run']}: {r['message']}" for r in records if r["state"] == "failed"]}


def _fmt(stat: dict | None) -> str:
    if not stat or stat.get("mean") is None:
        return "n/a"
    sd = stat.get("sd")
    return f"{stat['mean']:.4g}" + (f" ± {sd:.2g}" if sd is not None else "")


def best_entries(results: dict) -> dict:
    """Per metric shown in the arms table: the arm or baseline with the best mean (the floor excluded)."""
    best = {}
    for key, source, _, higher in METRICS:
        if source in ("stability", "state") or higher is None:
            continue
        mid = metric_id(key, source)
        candidates = {arm: stats[mid]["mean"] for arm, stats in results["arms"].items()}
        if source == "best":
            candidates.update({LABELS.get(m, m): results["baselines"][m][key]["mean"] for m in PREDICTORS})
        finite = {k: v for k, v in candidates.items() if v is not None}
        if finite:
            best[mid] = (max if higher else min)(finite, key=finite.get)
    return best


def markdown(results: dict) -> str:
    spec = results["spec"]
    lines = [f"# Experiment {spec['name']}", "",
             f"{len(spec['arms'])} arms x {len(spec['seeds'])} seeds ({', '.join(map(str, spec['seeds']))}); "
             f"design: {'; '.join(results['design']) or 'unknown'}; shared overrides: "
             f"{' '.join(spec['common']) or 'none'}.", ""]
    lines += ["## Paired differences to the reference arm (same seeds, same splits)", "",
              "| arm | reference | metric | reference mean | arm mean | difference (mean ± sd) | 95% CI | verdict |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in results["comparisons"]:
        def num(v):
            return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4g}"
        diff = "n/a" if c["n"] == 0 else num(c["mean"]) + ("" if c["n"] < 2 else f" ± {c['sd']:.2g}")
        ci = "n/a" if c["n"] < 2 else f"{num(c['ci_low'])} … {num(c['ci_high'])}"
        tail = c["verdict"].rsplit(": ", 1)[-1]
        lines.append(f"| {c['arm']} | {c['reference']} | {c['label']} | {num(c['reference_mean'])} | "
                     f"{num(c['arm_mean'])} | {diff} | {ci} | {tail} |")
    best = best_entries(results)
    shown = [(k, s, label) for k, s, label, _ in METRICS]
    lines += ["", "## Every arm and baseline (mean ± sd over seeds; * best of arms and baselines, the floor "
              "excluded)", "", "| | " + " | ".join(label for _, _, label in shown) + " |",
              "| --- " * (len(shown) + 1) + "|"]
    for arm, stats in results["arms"].items():
        cells = []
        for key, source, _ in shown:
            mid = metric_id(key, source)
            cells.append(_fmt(stats[mid]) + ("*" if best.get(mid) == arm else ""))
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    for method in (*PREDICTORS, FLOOR):
        label = LABELS.get(method, method)
        cells = []
        for key, source, _ in shown:
            if source != "best":
                cells.append("")
                continue
            stat = results["baselines"][method].get(key)
            cells.append(_fmt(stat) + ("*" if best.get(key) == label else ""))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "## Verdicts", ""] + [f"- {c['verdict']}" for c in results["comparisons"]]
    if results["failed"]:
        lines += ["", "## Failed runs", ""] + [f"- {f}" for f in results["failed"]]
    return "\n".join(lines) + "\n"


def write_results(folder: Path, results: dict) -> dict[str, Path]:
    paths = {"json": Path(folder) / "results.json", "markdown": Path(folder) / "results.md"}
    atomic_write_text(paths["markdown"], markdown(results))
    atomic_write_json(paths["json"], json_ready(results))
    return paths
