"""The Inspect page shows a run's evaluation as the CLI prints it: every baseline and the floor beside the
model, the best entry named, the design and its warning; and it does so for an evaluation without
predictions (as an experiment writes them). The evaluation is a real one of a hand-built data set."""

import logging

import pytest
import yaml
from streamlit.testing.v1 import AppTest
from support import unescaped

from core.data.designs import describe_design
from core.evaluation.heldout import evaluate_predictions
from core.evaluation.report import json_ready, write_evaluation
from core.runs import RunWriter
from tests.unit.test_evaluation_heldout import KEYS, build_dataset, perfect_predictions

APP = "../../app/main.py"


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    path = root / "scored"
    with RunWriter(path) as writer:
        writer.write_status("completed", step=3)
    (path / "config.yaml").write_text(yaml.safe_dump({"run": {"name": "scored"}, "training": {"seed": 0},
                                                      "data": {"kwargs": {"split": "fraction"}}}))
    adata, split = build_dataset()
    result = evaluate_predictions(perfect_predictions(adata, split), adata, split, KEYS, top_k=2)
    summary = {**result.summary, "design": describe_design({"split": "fraction"}),
               "final": {"same_as_best": True}}
    write_evaluation(path / "eval", json_ready(summary), result.per_group)
    return root, result.summary


def test_inspect_shows_every_baseline_with_the_best_named_and_the_interpolation_warning(evaluated_run,
                                                                                       monkeypatch):
    root, summary = evaluated_run
    monkeypatch.setenv("ST_RUNS_DIR", str(root))
    logging.getLogger("app").disabled = True
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.session_state["selected_run"] = "scored"
    at.session_state["inspect_tab"] = "Δz vs velocity"
    at.switch_page("views/inspect.py").run()
    assert not at.exception and not at.error
    table = next(t.value for t in at.dataframe if "best" in t.value.columns)
    assert list(table.columns) == ["better", "best", "model", "no change", "global shift", "type shift",
                                   "Gaussian OT", "train burn", "real/real floor"]
    overall = summary["overall"]
    assert table.loc["energy distance", "model"] == pytest.approx(overall["model"]["energy_distance"], abs=1e-12)
    assert table.loc["MAE of means", "Gaussian OT"] == pytest.approx(overall["gaussian_ot"]["mae_mean"])
    assert table.loc["energy distance", "best"] == "model"  # the predictions are perfect
    assert table.loc["energy distance", "real/real floor"] > 0
    assert any("measure interpolation" in unescaped(w.value) for w in at.warning)
    assert any("Design: held-out cells" in t.value for t in at.text)
    # no predictions were kept: the Δz figures say how to get them
    assert any("did not keep" in i.value for i in at.info)


def test_train_form_design_becomes_the_split_and_a_numeric_cell_type_stays_text():
    from app.cache import DatasetRef
    from app.panels.train_form import BASES, DESIGNS, build_overrides
    from core.config import load_config
    from core.errors import ConfigError

    form = dict(base=BASES[2], checkpoint="", lora=False, mhc=False, velocity=False, epochs=1,
                learning_rate=1e-3, set_size=8, seed=0, device="CPU", extra="")
    demo = DatasetRef("demo", "burn_sham", "demo", None)
    cfg = load_config(overrides=build_overrides({**form, "design": "held-out cell type", "holdout": "1"}, demo, None))
    assert (cfg.data.kwargs.split, cfg.data.kwargs.holdout) == ("cell_type", "1")
    cfg = load_config(overrides=build_overrides({**form, "design": "held-out mice"}, demo, None))
    assert (cfg.data.kwargs.split, cfg.data.kwargs.holdout) == ("batch", None)
    assert DESIGNS[next(iter(DESIGNS))] == "auto"
    with pytest.raises(ConfigError, match="needs data.kwargs.holdout"):
        load_config(overrides=build_overrides({**form, "design": "held-out cell type", "holdout": " "}, demo, None))
