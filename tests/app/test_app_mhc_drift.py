"""The Inspect page's mHC tab shows how far H_res, H_pre and H_post moved from their init, each Δ on its own
symmetric colour scale, and says in one line why the streams' divergence cannot be measured without a checkpoint."""


import numpy as np
import pytest
from support import started_app, unescaped

from tests.app.test_app_views import H_RES_STEP_0, H_RES_STEP_20, by_title, write_run


@pytest.fixture
def app(tmp_path, monkeypatch):
    write_run(tmp_path, "mhc-s0", mhc=True, seed=0)
    at = started_app(monkeypatch, tmp_path, timeout=60)
    at.session_state["selected_run"] = "mhc-s0"
    at.switch_page("views/inspect.py").run()
    return at


def test_inspect_shows_h_res_drift_from_init_on_a_symmetric_scale(app):
    assert not app.exception
    figure = by_title(app, "Change from init (step 0) to step 20: ΔH_res (largest |Δ| 0.45)")
    heatmaps = [t for t in figure.data if t.type == "heatmap"]
    h_res, pre_post = heatmaps[:2], heatmaps[2:]
    # layer 0: 0.6 P + 0.1 - 0.25 = 0.45 / -0.15; layer 1: 0.4 I + 0.15 - 0.25 = 0.3 / -0.1
    np.testing.assert_allclose([np.asarray(t.z) for t in h_res], H_RES_STEP_20 - H_RES_STEP_0, atol=1e-6)
    assert all(t.zmin == pytest.approx(-0.45) and t.zmax == pytest.approx(0.45) for t in h_res)
    assert len(pre_post) == 2 and all(np.abs(np.asarray(t.z)).max() == 0 for t in pre_post)  # constant here
    history = by_title(app, "mHC over training")
    h_res_lines = [t for t in history.data if t.xaxis == "x2"]  # the middle row's first panel: H_res
    np.testing.assert_allclose([t.y for t in h_res_lines], [[0.0, 0.45], [0.0, 0.3]], atol=1e-6)
    assert any("logged no mHC gradients" in a.text for a in history.layout.annotations)


def test_stream_divergence_without_a_checkpoint_is_a_one_line_error_and_the_page_stays(app):
    app.toggle(key="inspect_divergence").set_value(True).run()
    assert not app.exception
    errors = [unescaped(e.value) for e in app.error]
    assert len(errors) == 1 and "no checkpoints/best.ckpt" in errors[0]
    assert by_title(app, "Change from init")  # the rest of the tab is still drawn


def test_inspect_says_which_mapping_moved_most_since_step_0(app):
    # the fixture's H_res moves by 0.45 at most (layer 0) from step 0 to 20; H_pre and H_post stay where they began
    said = [unescaped(i.value) for i in app.info if "moved most" in i.value]
    assert said == ["From step 0 to step 20, H_res moved most: max |Δ| 0.45 in layer 0 (45.0% of its range), "
                    "against H_pre 0, H_post 0."]
