"""metrics.jsonl as readers see it (issue 12, points 4 and 12): rows whose step is not a number are dropped
instead of crashing figures and the app, other junk values become NaN, and a step logged twice (a resumed run
logging again what it had logged before) appears once, with the later row."""

import json

import numpy as np

from core.figures.run import run_figures
from core.runs import read_metrics


def _write(run_dir, rows):
    run_dir.mkdir(exist_ok=True)
    (run_dir / "status.json").write_text(json.dumps({"state": "completed"}))
    with open(run_dir / "metrics.jsonl", "w") as fh:
        for row in rows:
            fh.write((row if isinstance(row, str) else json.dumps(row)) + "\n")


def test_non_numeric_steps_are_dropped_and_repeated_steps_keep_the_last_row(tmp_path):
    run_dir = tmp_path / "r"
    _write(run_dir, [
        {"split": "train", "step": 1, "epoch": 0, "loss": 3.0},
        {"split": "train", "step": "one", "epoch": 0, "loss": 2.0},
        {"split": "train", "step": None, "loss": 2.5},
        {"split": "train", "step": 2, "epoch": 0, "loss": "high"},
        {"split": "train", "step": 2, "epoch": 0, "loss": 1.5},   # written again after a resume
        {"split": "val", "step": 2, "epoch": 0, "val_loss": 1.7},
        {"step": 3, "loss": 1.2},
        "[1, 2, 3]",
    ])
    frame = read_metrics(run_dir)
    assert list(frame["step"]) == [1, 2, 2, 3]
    assert frame["split"].tolist()[:3] == ["train", "train", "val"]
    assert frame["step"].dtype == np.int64
    np.testing.assert_allclose(frame.loc[frame["split"] == "train", "loss"], [3.0, 1.5])
    assert frame["loss"].iloc[3] == 1.2


def test_figures_of_a_run_with_junk_metric_rows_are_drawn(tmp_path):
    run_dir = tmp_path / "r"
    _write(run_dir, [{"split": "train", "step": s, "epoch": 0, "loss": 1.0 / s, "grad_norm": 0.5}
                     for s in range(1, 6)] + [{"split": "train", "step": "NaN?", "loss": 9.0},
                                              {"split": "train", "step": {"x": 1}, "loss": 9.0}])
    figures = run_figures(run_dir)
    loss = next(f for name, f in figures.items() if "loss" in name.lower())
    ys = np.concatenate([np.asarray(t.y, dtype=float) for t in loss.data if t.y is not None])
    assert 9.0 not in ys and np.isclose(ys, 1.0).any()
