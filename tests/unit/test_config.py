"""The typed training config: YAML + dotted overrides, Arc State's key names, presets, and one-line errors."""

import re

import pytest
import yaml

from core.config import config_from_dict, load_config
from core.errors import ConfigError


def test_defaults_are_the_small_cpu_preset():
    cfg = load_config()
    m = cfg.model.kwargs
    assert (m.hidden_dim, m.n_layers, m.n_heads, m.backbone, m.cell_set_len) == (128, 4, 4, "llama", 32)
    assert m.dist_loss == "energy" and not m.use_mhc and not m.use_velocity_alignment
    assert cfg.data.kwargs.path is None and cfg.data.kwargs.dataset == "burn_sham"


def test_dotted_overrides_set_typed_values():
    cfg = load_config(overrides=["model.kwargs.lora.r=16", "training.max_epochs=5", "model.kwargs.use_mhc=true",
                                 "model.kwargs.mhc.layer_indices=[0,2]", "training.learning_rate=3e-4",
                                 "data.kwargs.control_pert=sham", "model.kwargs.velocity_lambda=1"])
    assert cfg.model.kwargs.lora.r == 16 and cfg.training.max_epochs == 5
    assert cfg.model.kwargs.use_mhc is True and cfg.model.kwargs.mhc.layer_indices == [0, 2]
    assert cfg.training.learning_rate == pytest.approx(3e-4)
    assert isinstance(cfg.model.kwargs.velocity_lambda, float) and cfg.model.kwargs.velocity_lambda == 1.0
    assert cfg.data.kwargs.control_pert == "sham"


def test_yaml_file_then_overrides_take_precedence(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"model": {"kwargs": {"hidden_dim": 64, "n_heads": 8}},
                                    "training": {"max_epochs": 2, "lr": 0.01}}))
    cfg = load_config(path, ["training.max_epochs=7"])
    assert cfg.model.kwargs.hidden_dim == 64 and cfg.model.kwargs.n_heads == 8
    assert cfg.training.max_epochs == 7
    assert cfg.training.learning_rate == pytest.approx(0.01)  # Arc's 'lr' in a YAML file


def test_arc_state_key_names_are_accepted():
    cfg = load_config(overrides=["training.lr=0.005", "training.max_steps=40", "training.val_freq=10",
                                 "training.gradient_clip_val=10", "training.train_seed=42",
                                 "model.kwargs.transformer_backbone_key=GPT2", "model.kwargs.init_from=base.ckpt"])
    t = cfg.training
    assert (t.learning_rate, t.max_steps, t.val_freq, t.grad_clip, t.seed) == (0.005, 40, 10, 10.0, 42)
    assert cfg.model.kwargs.backbone == "gpt2" and cfg.model.init_from == "base.ckpt"


def test_the_resolved_config_round_trips_through_a_dict():
    cfg = load_config(overrides=["model.kwargs.use_mhc=true", "model.kwargs.mhc.layer_indices=[1]"])
    assert config_from_dict(cfg.to_dict()) == cfg


def test_gpu_preset_has_arc_state_sm_sizes_and_overrides_still_apply():
    cfg = load_config(overrides=["training.batch_size=4"], preset="gpu")
    m = cfg.model.kwargs
    assert (m.hidden_dim, m.n_heads, m.cell_set_len) == (672, 8, 128)
    assert cfg.training.batch_size == 4


def test_devices_list_becomes_lightning_text():
    assert load_config(overrides=["training.devices=[0,1]"]).training.devices == "0,1"
    assert load_config(overrides=["training.devices=2"]).training.devices == "2"


def test_unknown_key_names_the_closest_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown config key 'training.learnig_rate'; did you mean "
                                          r"training.learning_rate"):
        load_config(overrides=["training.learnig_rate=0.01"])
    with pytest.raises(ConfigError, match="model.kwargs.lora.r"):
        load_config(overrides=["model.kwargs.lora.rank=4"])


def test_unknown_key_in_a_yaml_file_is_an_error(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("model:\n  kwargs:\n    hiden_dim: 64\n")
    with pytest.raises(ConfigError, match="model.kwargs.hidden_dim"):
        load_config(path)


@pytest.mark.parametrize("override, message", [
    ("training.max_epochs=three", "training.max_epochs must be a whole number"),
    ("model.kwargs.use_mhc=maybe", "model.kwargs.use_mhc must be true or false"),
    ("training.learning_rate=fast", "training.learning_rate must be a number"),
    ("model.kwargs.mhc.layer_indices=zero", "must be a whole number"),
])
def test_wrong_type_is_a_one_line_error(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(overrides=[override])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("override, message", [
    ("training.learning_rate=-0.001", "training.learning_rate must be > 0"),
    ("training.lr=0", "training.learning_rate must be > 0"),
    ("model.kwargs.mhc.layer_indices=[0,4]", r"layer_indices \[0, 4\] must lie in 0..3"),
    ("model.kwargs.mhc.layer_indices=[-1]", "layer_indices"),
    ("model.kwargs.mhc.sinkhorn_iters=0", "sinkhorn_iters must be >= 1"),
    ("model.kwargs.mhc.n_streams=1", "n_streams must be >= 2"),
    ("model.kwargs.hidden_dim=30", "divisible by n_heads"),
    ("model.kwargs.backbone=bert", "backbone must be llama or gpt2"),
    ("model.kwargs.velocity_lambda=-1", "must be >= 0"),
    ("model.kwargs.velocity_loss=cosine", "alignment or l2"),
    ("data.kwargs.split=random", "split must be auto, fraction, batch or cell_type"),
    ("data.kwargs.match_by=mouse", "match_by must be cell_type or cell_type_batch"),
    ("training.max_steps=0", "max_steps must be >= 1"),
    ("training.accelerator=tpu", "training.accelerator must be"),
])
def test_out_of_range_values_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_override_without_equals_sign_says_how():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(overrides=["training.max_epochs"])


def test_unknown_preset_and_missing_file_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config(preset="huge")
    with pytest.raises(ConfigError, match="no config file"):
        load_config(tmp_path / "absent.yaml")


def test_a_saved_config_yaml_loads_back_to_the_same_config(tmp_path):
    from core.config import save_config

    cfg = load_config(overrides=["model.kwargs.use_velocity_alignment=true", "model.kwargs.velocity_warmup_steps=7",
                                 "data.kwargs.match_by=cell_type_batch", "training.val_freq=5"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize("override, message", [
    ("model.kwargs.use_mhc=1", "model.kwargs.use_mhc must be true or false; got 1"),
    ("model.kwargs.lora.r=true", "model.kwargs.lora.r must be a whole number; got True"),
    ("training.max_epochs=2.5", "training.max_epochs must be a whole number; got 2.5"),
    ("run.name={a: 1}", "run.name must be a text value"),
])
def test_the_structured_schema_refuses_values_of_another_type(override, message):
    # OmegaConf alone would read 1 as true and true as 1; the schema keeps bools and numbers apart
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(overrides=[override])


def test_a_single_value_for_a_list_key_is_a_one_element_list_and_whole_floats_are_ints():
    cfg = load_config(overrides=["model.kwargs.lora.target_modules=q_proj", "model.kwargs.mhc.layer_indices=0",
                                 "training.max_epochs=2.0"])
    assert cfg.model.kwargs.lora.target_modules == ["q_proj"]
    assert cfg.model.kwargs.mhc.layer_indices == [0]
    assert cfg.training.max_epochs == 2 and isinstance(cfg.training.max_epochs, int)
