"""mhc.lr_scale on the demo fine-tune: how far H_res moves and what it does to the held-out fit.
Usage: python docs/evidence/mhc_lr_scale.py OUT.jsonl  (see docs/evidence/README.md)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from core.evaluation.evaluate import evaluate_run
from core.evaluation.mhc_drift import run_mapping_drift

SEEDS = (0, 1, 2)
SCALES = (1, 3, 10, 30)


def main(out: Path) -> None:
    root = Path(os.environ.get("ST_RUNS_DIR", "runs")) / "evidence" / "mhc_lr_scale"
    arms = {"lora": []} | {f"mhc-x{s}": ["model.kwargs.use_mhc=true", f"model.kwargs.mhc.lr_scale={s}"] for s in SCALES}
    rows = []
    for seed in SEEDS:
        for arm, overrides in arms.items():
            run_dir = root / f"{arm}-s{seed}"
            if not (run_dir / "checkpoints" / "final.ckpt").exists():
                subprocess.run([sys.executable, "-m", "core", "train", "model.init_from=demo", f"training.seed={seed}",
                                f"run.dir={run_dir}", *overrides], check=True, stdout=subprocess.DEVNULL)
            row = {"arm": arm, "seed": seed}
            if arm != "lora":
                drift = run_mapping_drift(run_dir)
                row |= {f"max_abs_{m}": drift[f"final_max_abs_{m}"].tolist() for m in ("h_res", "h_pre", "h_post")}
            for checkpoint in ("best", "final"):
                summary = evaluate_run(run_dir, checkpoint=run_dir / "checkpoints" / f"{checkpoint}.ckpt",
                                       output=run_dir / f"eval_{checkpoint}", save_predictions=False)
                row[f"{checkpoint}_ed"] = summary["overall"]["model"]["energy_distance"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
