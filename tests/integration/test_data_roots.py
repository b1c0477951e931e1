"""Form text never chooses where a run writes, and paths typed into the app are read only under the data roots
(issue 12, points 1 and 14): every spelling of a write-location key is refused, a symlink is judged by its
target, and an error never says where a path outside the roots leads or whether it exists."""

import os
from pathlib import Path

import pytest

from app.panels.train_form import check_overrides
from core.config import load_config
from core.data.roots import check_app_config, checked_input_path
from core.errors import ConfigError, DataError


@pytest.fixture
def roots(tmp_path, monkeypatch):
    """runs/ and an allowed data folder inside tmp_path; 'outside' is in no root (HOME points elsewhere)."""
    home, runs, allowed, outside = (tmp_path / n for n in ("home", "runs", "allowed", "outside"))
    for folder in (home, runs, allowed, outside):
        folder.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("ST_RUNS_DIR", str(runs))
    monkeypatch.setenv("ST_DATA_ROOTS", str(allowed))
    return {"home": home, "runs": runs, "allowed": allowed, "outside": outside}


@pytest.mark.parametrize("line", [
    "run.dir={target}", "run.root={target}", "run={{dir: {target}}}", "run={{root: {target}, name: x}}",
    " run.dir = {target}",
])
def test_every_spelling_of_a_write_location_in_form_text_is_refused(roots, line):
    target = roots["outside"] / "evil"
    with pytest.raises(ConfigError, match="cannot be set from the app"):
        check_overrides(["training.max_steps=1", line.format(target=target)])
    assert not target.exists()


def test_cli_run_root_still_checks_the_run_name(roots, capsys):
    from core.__main__ import main

    root = roots["outside"] / "chosen-root"
    code = main(["train", f"run.root={root}", "run.name=../escape", "training.max_steps=1"])
    assert code == 2
    assert "contains a path" in capsys.readouterr().err
    assert not root.exists() and not (roots["outside"] / "escape").exists()


def _h5ad(path: Path) -> Path:
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    return path


def test_files_under_each_root_are_allowed(roots):
    for name in ("home", "runs", "allowed"):
        path = _h5ad(roots[name] / "x.h5ad")
        assert checked_input_path(str(path), "data file", (".h5ad",)) == path.resolve()


def test_outside_the_roots_an_existing_and_a_missing_file_get_the_same_words(roots):
    present = _h5ad(roots["outside"] / "real.h5ad")
    messages = []
    for path in (present, roots["outside"] / "missing.h5ad"):
        with pytest.raises(DataError, match="outside the folders the app may read") as err:
            checked_input_path(str(path), "data file", (".h5ad",))
        messages.append(str(err.value).replace(path.name, "NAME"))
    assert messages[0] == messages[1]


def test_a_symlink_inside_a_root_to_a_file_outside_is_refused_without_naming_the_target(roots):
    secret = roots["outside"] / "shadow"
    secret.write_text("root:$6$secret:19000:0:99999:7:::\n")
    link = roots["allowed"] / "x.h5ad"
    os.symlink(secret, link)
    with pytest.raises(DataError) as err:
        checked_input_path(str(link), "data file", (".h5ad",))
    assert str(link) in str(err.value)
    assert "shadow" not in str(err.value) and "secret" not in str(err.value)
    assert str(roots["outside"]) not in str(err.value).replace(str(link), "")


def test_a_dotdot_path_that_leaves_a_root_is_refused(roots):
    _h5ad(roots["outside"] / "real.h5ad")
    sneaky = roots["allowed"] / ".." / "outside" / "real.h5ad"
    with pytest.raises(DataError, match="outside the folders"):
        checked_input_path(str(sneaky), "data file", (".h5ad",))


def test_app_config_checks_data_path_and_base_checkpoint_against_the_roots(roots):
    outside_ckpt = roots["outside"] / "base.ckpt"
    outside_ckpt.write_bytes(b"x")
    with pytest.raises(DataError, match="base checkpoint path"):
        check_app_config(load_config(overrides=[f"model.checkpoint={outside_ckpt}"]))  # an alias of init_from
    with pytest.raises(DataError, match="data file path"):
        check_app_config(load_config(overrides=[f"data.kwargs.path={roots['outside'] / 'd.h5ad'}"]))
    inside = _h5ad(roots["allowed"] / "d.h5ad")
    check_app_config(load_config(overrides=[f"data.kwargs.path={inside}", "model.init_from=demo"]))


def test_the_app_launches_nothing_when_form_text_sets_run_dir(roots):
    from streamlit.testing.v1 import AppTest

    target = roots["outside"] / "written-by-form"
    at = AppTest.from_file("../../app/main.py", default_timeout=120)
    at.run()
    at.switch_page("views/train.py").run()
    at.text_area(key="tf_extra").set_value(f"training.max_steps=1\nrun.dir={target}")
    next(b for b in at.button if b.label == "Launch").click().run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "run.dir cannot be set from the app" in errors[0]
    assert not at.success
    assert not target.exists()
    assert [p.name for p in roots["runs"].iterdir() if not p.name.startswith(".")] == []
