"""A config cannot make us expand, allocate or build without bound (issue 12, points 2 and 12): YAML alias bombs,
deep nesting and huge text are refused after parsing and before use; sizes have upper bounds; a model whose
estimated training memory exceeds the budget is refused before it is built."""

import pytest

from core.config import Config, load_config
from core.config_limits import DEFAULT_MAX_SIZE, estimate_training_bytes
from core.errors import ConfigError


def alias_bomb(depth: int = 8, width: int = 9) -> str:
    """The red team's 377-byte override: each level lists the previous one ``width`` times."""
    levels = ["&l0 [x,x,x,x,x,x,x,x,x]"]
    for i in range(1, depth + 1):
        levels.append(f"&l{i} [" + ",".join([f"*l{i - 1}"] * width) + "]")
    return "[" + ",".join(levels) + "]"


@pytest.mark.parametrize("key", ["run.name", "training.devices", "model.kwargs.lora.target_modules",
                                 "run", "unknown.key"])
def test_an_alias_bomb_in_any_override_is_refused_in_one_line(key):
    text = f"{key}={alias_bomb()}"
    assert len(text) < 500
    with pytest.raises(ConfigError, match="anchors and aliases") as err:
        load_config(overrides=[text])
    assert "\n" not in str(err.value)


def test_an_alias_bomb_in_a_config_file_is_refused(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text("a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{c}: &{c} [{','.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")) + "run:\n  name: *i\n")
    with pytest.raises(ConfigError, match="anchors and aliases"):
        load_config(path)


def test_deep_nesting_and_long_text_are_refused_too(tmp_path):
    with pytest.raises(ConfigError, match="characters long"):
        load_config(overrides=["run.name=" + "x" * 20_000])
    with pytest.raises(ConfigError, match="at most 4,096"):
        load_config(overrides=["data.kwargs.pert_col=" + "c" * 5000])
    deep = tmp_path / "deep.yaml"
    deep.write_text("run: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError):
        load_config(deep)
    big = tmp_path / "big.yaml"
    big.write_text("# padding\n" * 200_000)
    with pytest.raises(ConfigError, match="larger than"):
        load_config(big)


def test_the_size_limit_can_be_raised(monkeypatch):
    wide = "[" + ",".join(["1"] * 2000) + "]"
    monkeypatch.setenv("ST_CONFIG_MAX_SIZE", "1000")
    with pytest.raises(ConfigError, match="ST_CONFIG_MAX_SIZE"):
        load_config(overrides=[f"model.kwargs.mhc.layer_indices={wide}"])
    monkeypatch.setenv("ST_CONFIG_MAX_SIZE", str(DEFAULT_MAX_SIZE))
    with pytest.raises(ConfigError, match="2,000 entries; at most 1,024"):  # parsed, then the list bound applies
        load_config(overrides=[f"model.kwargs.lora.target_modules={wide}"])


@pytest.mark.parametrize("override, phrase", [
    ("model.kwargs.n_layers=10000", "n_layers must be <= 128"),
    ("model.kwargs.hidden_dim=65536", "hidden_dim must be <= 16,384"),
    ("model.kwargs.cell_set_len=1000000", "cell_set_len must be <= 8,192"),
    ("training.batch_size=100000", "batch_size must be <= 8,192"),
    ("model.kwargs.mhc.n_streams=64", "n_streams must be <= 16"),
    ("training.learning_rate=inf", "learning_rate must be a finite number"),
    ("training.learning_rate=.inf", "learning_rate must be a finite number"),
    ("model.kwargs.velocity_lambda=.nan", "velocity_lambda must be a finite number"),
    ("training.grad_clip=1e400", "grad_clip must be a finite number"),
])
def test_sizes_have_upper_bounds_and_numbers_must_be_finite(override, phrase):
    with pytest.raises(ConfigError, match=phrase.replace(".", r"\.")):
        load_config(overrides=[override])


def test_permutation_mhc_with_many_streams_is_refused_before_enumerating_them():
    with pytest.raises(ConfigError, match="39,916,800 permutation matrices"):
        load_config(overrides=["model.kwargs.use_mhc=true", "model.kwargs.mhc.projection=permutations",
                               "model.kwargs.mhc.n_streams=11"])
    load_config(overrides=["model.kwargs.use_mhc=true", "model.kwargs.mhc.projection=permutations",
                           "model.kwargs.mhc.n_streams=6"])


def test_a_model_too_big_for_the_memory_budget_is_refused_before_building(monkeypatch):
    monkeypatch.setenv("ST_MEMORY_BUDGET", "1G")
    with pytest.raises(ConfigError, match="memory budget of 1.0 GB") as err:
        load_config(overrides=["model.kwargs.hidden_dim=8192", "model.kwargs.n_layers=8", "model.kwargs.n_heads=8"])
    assert "ST_MEMORY_BUDGET" in str(err.value)
    load_config()  # the small default model fits easily
    monkeypatch.setenv("ST_MEMORY_BUDGET", "lots")
    with pytest.raises(ConfigError, match="is not a size"):
        load_config()


def test_the_estimate_grows_with_depth_width_and_set_size():
    base = Config()
    small = estimate_training_bytes(base)
    for key, value in (("hidden_dim", 256), ("n_layers", 8), ("cell_set_len", 64)):
        cfg = Config()
        setattr(cfg.model.kwargs, key, value)
        assert estimate_training_bytes(cfg) > small
    # the default demo model: about 0.8 M parameters, well under 100 MB with activations
    assert 10e6 < small < 100e6


def test_the_cli_refuses_a_bomb_with_exit_2_and_one_line(capsys):
    from core.__main__ import main

    code = main(["train", f"run.name={alias_bomb()}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "anchors and aliases" in err[0]


def test_a_run_folder_with_a_bomb_in_its_config_lists_without_expanding_it(tmp_path):
    from core.runs import list_runs, read_config

    run = tmp_path / "copied-run"
    run.mkdir()
    (run / "status.json").write_text('{"state": "completed"}')
    (run / "config.yaml").write_text("a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{c}: &{c} [{','.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")))
    assert read_config(run) == {}
    assert [r["name"] for r in list_runs(tmp_path)] == ["copied-run"]


def test_the_app_bounds_the_more_settings_text():
    from app.panels.train_form import BASES, MAX_EXTRA_CHARS, build_overrides

    form = dict(base=BASES[2], checkpoint="", lora=False, mhc=False, velocity=False, epochs=1, learning_rate=1e-3,
                set_size=8, seed=0, device="CPU", extra="training.seed=1\n" * (MAX_EXTRA_CHARS // 10))
    with pytest.raises(ConfigError, match="'More settings' holds"):
        build_overrides(form, None, None)
    form["extra"] = "training.seed=1\n"
    assert build_overrides(form, None, None)[-1] == "training.seed=1"


def test_the_apps_launch_check_refuses_a_bomb_before_launching():
    from app.panels.train_form import check_overrides

    with pytest.raises(ConfigError, match="anchors and aliases"):
        check_overrides(["training.max_steps=1", f"run.name={alias_bomb()}"])
