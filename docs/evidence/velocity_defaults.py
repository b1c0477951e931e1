"""Velocity defaults on the demo: beta = 1 vs beta = 0 at lambda = 0.1, min_confidence, confidence vs accuracy.
Usage: python docs/evidence/velocity_defaults.py OUT.jsonl  (see docs/evidence/README.md)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from core.data.demo import load_demo
from core.evaluation.evaluate import read_split
from core.evaluation.heldout import DataKeys, evaluate_predictions
from core.infer import predict

SEEDS = (0, 1, 2)
VELOCITY = ["model.kwargs.use_velocity_alignment=true", "model.kwargs.velocity_lambda=0.1"]


def cosine(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def main(out: Path) -> None:
    adata = load_demo("burn_sham", with_velocity=True)
    sham = (adata.obs["condition"].astype(str) == "sham").to_numpy()
    confidence = adata.obs["velocity_confidence"].to_numpy(float)
    accuracy = cosine(np.asarray(adata.obsm["velocity_pca"], float), np.asarray(adata.obsm["true_velocity_pca"], float))
    median = float(np.median(confidence[sham]))
    confident = sham & (confidence >= median)
    rows = [{"kind": "confidence", "spearman_all": float(spearmanr(confidence, accuracy).statistic),
             "spearman_sham": float(spearmanr(confidence[sham], accuracy[sham]).statistic),
             "sham_median_confidence": median, "accuracy_confident_half": float(accuracy[confident].mean()),
             "accuracy_other_half": float(accuracy[sham & ~confident].mean())}]
    arms = {"lora": [], "beta1": [*VELOCITY, "model.kwargs.velocity_beta=1.0"],
            "beta0": [*VELOCITY, "model.kwargs.velocity_beta=0.0"],
            "beta0_minconf": [*VELOCITY, "model.kwargs.velocity_beta=0.0",
                              f"model.kwargs.velocity_min_confidence={median:.4f}"]}
    root = Path(os.environ.get("ST_RUNS_DIR", "runs")) / "evidence" / "velocity"
    for seed in SEEDS:
        for arm, overrides in arms.items():
            run_dir = root / f"{arm}-s{seed}"
            if not (run_dir / "checkpoints" / "final.ckpt").exists():
                subprocess.run([sys.executable, "-m", "core", "train", "model.init_from=demo", f"training.seed={seed}",
                                f"run.dir={run_dir}", *overrides], check=True, stdout=subprocess.DEVNULL)
            split = read_split(run_dir)
            controls = adata.obs_names[adata.obs_names.isin(split.index[split == "test"]) & sham]
            row = {"kind": "run", "arm": arm, "seed": seed}
            for checkpoint in ("best", "final"):
                predictions = predict(run_dir / "checkpoints" / f"{checkpoint}.ckpt", adata,
                                      control_cells=controls.to_numpy(), seed=0)
                # every arm scored alike: velocity metrics weighted by confidence, no threshold
                for velocity, weights, name in (("velocity_pca", "velocity_confidence", "vz"),
                                                ("true_velocity_pca", None, "true")):
                    keys = DataKeys("X_pca", "condition", "sham", "cell_types_simple_short", velocity, weights)
                    overall = evaluate_predictions(predictions, adata, split, keys).summary["overall"]["model"]
                    row[f"{checkpoint}_ed"] = overall["energy_distance"]
                    row[f"{checkpoint}_cos_{name}"] = overall["cos_delta_v"]
                    row[f"{checkpoint}_magnitude_ratio_{name}"] = overall["magnitude_ratio"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
