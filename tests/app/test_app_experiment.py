"""The Compare page's experiment panel shows an experiment's verdicts, paired table and dot plots as
results.json holds them; a bad setting in its form is one error and launches nothing; and the background
launch it uses runs the real CLI, whose one-line error lands in the experiment's log."""

import json
import logging

import pytest
from streamlit.testing.v1 import AppTest
from support import unescaped

from core.experiment.launch import _CHILDREN, experiment_state, launch_experiment
from core.experiment.results import write_results
from tests.unit.test_experiment_stats import fake_results

APP = "../../app/main.py"


@pytest.fixture
def runs_root(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    folder = root / "experiments" / "fake"
    folder.mkdir(parents=True)
    results = fake_results(tmp_path / "evals", [0.13, 0.12, 0.15], [0.1296, 0.1196, 0.1493])
    write_results(folder, {**results, "seconds": 12.5})
    monkeypatch.setenv("ST_RUNS_DIR", str(root))
    logging.getLogger("app").disabled = True
    return root, results


def compare_page():
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page("views/compare.py").run()
    return at


def test_panel_shows_the_verdicts_and_the_paired_table_of_results_json(runs_root):
    _, results = runs_root
    at = compare_page()
    assert not at.exception and not at.error
    texts = [t.value for t in at.text]
    for comparison in results["comparisons"]:
        assert comparison["verdict"] in texts
    table = next(t.value for t in at.dataframe if "difference" in t.value.columns)
    ed = table[table["metric"] == "held-out ED"].iloc[0]
    assert ed["difference"] == pytest.approx(-0.0005, abs=1e-12)  # mean of -0.0004, -0.0004, -0.0007
    assert ed["seeds"] == 3 and ed["arm"] == "+mhc" and ed["reference"] == "base"
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert any("each seed's runs, paired" in c["layout"]["title"]["text"] for c in charts)
    # the ED-against-cos(dz, v_z) figure is shown too; these fake runs have no velocity metric, and it says so
    ed_cos = [c for c in charts if c["layout"]["title"]["text"].startswith("Held-out ED against cos")]
    assert len(ed_cos) == 1 and "No evaluated run" in ed_cos[0]["layout"]["annotations"][0]["text"]


def test_a_bad_setting_in_the_form_is_one_error_and_starts_nothing(runs_root):
    root, _ = runs_root
    at = compare_page()
    at.text_area(key="experiment_overrides").set_value("training.max_stepz=3")
    next(b for b in at.button if b.label == "Run experiment").click().run()
    assert any("arm base: unknown config key 'training.max_stepz'" in unescaped(e.value) for e in at.error)
    assert sorted(p.name for p in (root / "experiments").iterdir()) == ["fake"]
    assert not at.exception


def test_background_launch_runs_the_cli_and_its_error_reaches_the_log(tmp_path):
    folder = launch_experiment("base,+mhc", 1, "bad-width", ["model.kwargs.hidden_dim=7"], demo_base=False,
                               root=tmp_path)
    assert _CHILDREN[folder].wait() == 2  # a UserError: exit code 2
    log = (folder / "log.txt").read_text()
    assert "--arms base,+mhc --seeds 1 --name bad-width --no-demo-base model.kwargs.hidden_dim=7" in log
    assert "error: arm base: model.kwargs.hidden_dim (7) must be >= 8" in log
    assert experiment_state(folder) == "failed"
    assert not [p for p in tmp_path.iterdir() if p.name != "experiments"]  # no run folder was made
