"""Compare's evaluation table: readable metric names with the better direction, mean ± s.d. over the seeds
of each configuration, and the best configuration starred per metric."""

import json
import logging

import numpy as np
import pytest
import yaml
from streamlit.testing.v1 import AppTest

from core.evaluation.seed_summary import formatted, metric_label, per_configuration
from core.runs import RunWriter

APP = "../../app/main.py"


def test_metric_labels_say_which_way_is_better():
    assert metric_label("energy_distance").endswith("↓")
    assert metric_label("pearson_delta").endswith("↑")
    assert metric_label("magnitude_ratio").endswith("→ 1")
    assert metric_label("something_new") == "something_new"


def test_mean_and_sd_over_seeds_and_the_best_per_metric():
    evaluations = {"a0": {"energy_distance": 0.10, "pearson_delta": 0.90, "magnitude_ratio": 1.5},
                   "a1": {"energy_distance": 0.14, "pearson_delta": 0.80, "magnitude_ratio": 1.3},
                   "b0": {"energy_distance": 0.20, "pearson_delta": 0.95, "magnitude_ratio": 0.9}}
    frames = per_configuration(evaluations, {"use_mhc=False": ["a0", "a1"], "use_mhc=True": ["b0"]})
    assert frames["mean"].loc["use_mhc=False", "energy_distance"] == pytest.approx(0.12)
    assert frames["sd"].loc["use_mhc=False", "energy_distance"] == pytest.approx(np.std([0.10, 0.14], ddof=1))
    assert np.isnan(frames["sd"].loc["use_mhc=True", "energy_distance"])
    best = frames["best"]
    assert best.loc["use_mhc=False", "energy_distance"] and not best.loc["use_mhc=True", "energy_distance"]
    assert best.loc["use_mhc=True", "pearson_delta"]  # higher is better
    assert best.loc["use_mhc=True", "magnitude_ratio"]  # |0.9 - 1| < |1.4 - 1|
    table = formatted(frames)
    assert table.loc["use_mhc=False", metric_label("energy_distance")] == "★ 0.12 ± 0.028 (n=2)"
    assert table.loc["use_mhc=True", metric_label("energy_distance")] == "0.2"


def write_evaluated(root, name, mhc, seed, energy):
    path = root / name
    with RunWriter(path) as writer:
        writer.write_status("running", total_steps=2)
        for step in range(2):
            writer.append_metrics({"split": "train", "step": step, "epoch": 0, "loss": 1.0})
        writer.write_status("completed")
    (path / "config.yaml").write_text(yaml.safe_dump({"model": {"kwargs": {"use_mhc": mhc}},
                                                      "training": {"seed": seed}, "run": {"name": name}}))
    (path / "eval").mkdir()
    (path / "eval" / "metrics.json").write_text(json.dumps(
        {"overall": {"model": {"energy_distance": energy, "pearson_delta": 0.9},
                     "no_change": {"energy_distance": 2.0}}}))


def test_compare_page_shows_the_seed_table_with_the_best_starred(tmp_path, monkeypatch):
    monkeypatch.setenv("ST_RUNS_DIR", str(tmp_path))
    logging.getLogger("app").disabled = True
    write_evaluated(tmp_path, "lora-s0", False, 0, 0.10)
    write_evaluated(tmp_path, "lora-s1", False, 1, 0.14)
    write_evaluated(tmp_path, "mhc-s0", True, 0, 0.30)
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page("views/compare.py").run()
    at.multiselect(key="compare_runs").set_value(["lora-s0", "lora-s1", "mhc-s0"]).run()
    assert not at.exception
    table = next(t.value for t in at.dataframe if metric_label("energy_distance") in t.value.columns)
    column = table[metric_label("energy_distance")]
    assert column["use_mhc=False"] == "★ 0.12 ± 0.028 (n=2)" and column["use_mhc=True"] == "0.3"
