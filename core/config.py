"""One typed configuration for training, loadable from YAML and overridable with dotted ``key=value`` pairs,
as in ``python -m core train model.kwargs.lora.r=16 training.max_epochs=5`` (Arc State's ``state tx train``).

Arc State's key names are accepted too (``ALIASES``): ``training.lr`` for ``training.learning_rate``,
``training.gradient_clip_val``, ``training.train_seed``, ``model.kwargs.transformer_backbone_key``, ...;
``training.max_steps`` and ``training.val_freq`` (in steps) work as there. An unknown key is an error naming the
closest valid keys.

Two presets (``PRESETS``, ``python -m core train --preset gpu``): ``small``, the defaults, fine-tunes the demo in
seconds on a CPU; ``gpu`` has the sizes of Arc State's ``state_sm`` (hidden 672, 8 heads, sets of 128 cells).
Data: with no ``data.kwargs.path`` the demo is used, ``data.kwargs.dataset=atlas`` for pretraining a base.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from core.config_limits import (
    MAX_CONFIG_FILE_BYTES,
    check_bounds,
    check_model_memory,
    check_parsed_size,
    check_text_size,
)
from core.errors import ConfigError

# Arc State's names -> ours, so that commands written for ``state tx train`` run unchanged.
ALIASES = {
    "training.lr": "training.learning_rate",
    "training.gradient_clip_val": "training.grad_clip",
    "training.train_seed": "training.seed",
    "model.kwargs.transformer_backbone_key": "model.kwargs.backbone",
    "model.kwargs.distributional_loss": "model.kwargs.dist_loss",
    "model.kwargs.loss": "model.kwargs.dist_loss",
    "model.kwargs.batch_encoder": "model.kwargs.use_batch",
    "model.kwargs.init_from": "model.init_from",
    "model.checkpoint": "model.init_from",
    # Arc's top-level run keys: the run folder is output_dir/name, the name checked like run.name
    "output_dir": "run.root",
    "name": "run.name",
}
# Arc State writes its backbone names in capitals (GPT2, llama); ours are lower case.
_LOWER_CASE_VALUES = ("model.kwargs.backbone", "model.kwargs.dist_loss")

PRESETS = {
    "small": {},
    "gpu": {"model": {"kwargs": {"hidden_dim": 672, "n_layers": 4, "n_heads": 8, "cell_set_len": 128}},
            "training": {"batch_size": 16, "learning_rate": 1e-4, "weight_decay": 5e-4, "grad_clip": 10.0}},
}


@dataclass
class LoraConfig:
    enable: bool = True
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    # None: the attention and MLP projections of the chosen backbone (see core/model/build.py)
    target_modules: list[str] | None = None


@dataclass
class MhcConfig:
    n_streams: int = 4
    sinkhorn_iters: int = 20
    layer_indices: list[int] | None = None  # None: every layer
    projection: str = "sinkhorn"  # or "permutations" (mHC-lite)
    dynamic: bool = True  # False: static mappings only, faster on CPUs
    # learning rate of the mHC mappings relative to training.learning_rate. Measured on the demo fine-tune (85
    # steps, 3 seeds): at 1 H_res moves by at most 0.02; at 10 by 0.87-0.91, and held-out energy distance is
    # 0.0056 +- 0.0019 below ST-LoRA's (1: -0.0001, 3: -0.0014, 30: -0.0064 +- 0.0075)
    lr_scale: float = 10.0


@dataclass
class ModelKwargs:
    hidden_dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    backbone: str = "llama"  # or "gpt2"
    cell_set_len: int = 32
    dist_loss: str = "energy"  # or "sinkhorn"
    blur: float = 0.05
    use_batch: bool = False  # a batch covariate; off by default because batch is often nested in condition
    train_encoders: bool = True  # under LoRA: keep encoders and head trainable
    lora: LoraConfig = field(default_factory=LoraConfig)
    use_mhc: bool = False
    mhc: MhcConfig = field(default_factory=MhcConfig)
    use_velocity_alignment: bool = False
    velocity_lambda: float = 0.1
    # beta = 0, direction only: on the demo (3 seeds, lambda 0.1) beta = 1 raised held-out energy distance by 0.069
    # over ST-LoRA for the same cos(delta_z, v_z) (+0.021 either way); README, "Velocity alignment"
    velocity_beta: float = 0.0
    velocity_warmup_steps: int = 50
    # warm-up as a fraction of the run's optimisation steps; when set it replaces velocity_warmup_steps
    velocity_warmup_fraction: float | None = None
    velocity_min_confidence: float = 0.0
    velocity_loss: str = "alignment"  # or "l2"
    # Arc State's own name: weight of the gene decoder's loss when fine-tuning an Arc gene-space model (its
    # decoded predictions against the perturbed cells' obsm['X_hvg'], the distributional loss; 0: decoder frozen)
    decoder_weight: float = 1.0


@dataclass
class ModelConfig:
    kwargs: ModelKwargs = field(default_factory=ModelKwargs)
    init_from: str | None = None  # a checkpoint path, or "demo" for the demo base
    # true: fine-tune even when base tensors do not fit this model (they are skipped and start random)
    allow_partial_base: bool = False


@dataclass
class TrainingConfig:
    max_epochs: int | None = None  # 5 when neither max_epochs nor max_steps is set
    max_steps: int = -1
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    val_freq: int | None = None  # validate every N steps; None: every epoch
    batch_size: int = 8  # sets per optimisation step
    seed: int = 0
    grad_clip: float = 1.0
    accelerator: str = "auto"  # auto | cpu | gpu | cuda | mps
    devices: str = "auto"
    strategy: str = "auto"
    precision: str | None = None  # None: bf16-mixed on CUDA, 32 elsewhere
    mhc_snapshot_every: int = 10
    # CPU threads for torch. None: half of torch's default when training on a CPU (1 on a 2-core machine): on a
    # busy 2-core CPU a demo fine-tune took 5 s on 1 thread and 57-70 s on 2; on an idle one both took 4-5 s.
    num_threads: int | None = None
    # torch.compile the model's forward (core/training/compile.py): faster steps after a compile of seconds to
    # minutes in the first steps; for long runs and GPUs, not for a demo fine-tune of a few seconds
    compile: bool = False
    resume: bool = False


@dataclass
class DataKwargs:
    dataset: str = "burn_sham"  # the demo to use when no path is given: burn_sham | atlas
    path: str | None = None
    # None: taken from the data (the demo's known layout, else core.data.mapping.guess_mapping)
    embed_key: str | None = None
    pert_col: str | None = None
    control_pert: str | None = None
    cell_type_key: str | None = None
    batch_col: str | None = None
    velocity_key: str | None = None
    confidence_key: str | None = None
    # auto: batch for burn/sham-like data with >= 2 batches (mice) per condition, else fraction | fraction (cells
    # within each cell type: interpolation) | batch (whole mice) | cell_type (the cell type ``holdout``)
    split: str = "auto"
    holdout: str | None = None  # the held-out cell type of split=cell_type
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    match_by: str = "cell_type"  # cell_type | cell_type_batch


@dataclass
class DataConfig:
    kwargs: DataKwargs = field(default_factory=DataKwargs)


@dataclass
class RunConfig:
    name: str = "run"
    dir: str | None = None  # an existing run folder (made by the app / launch_run); else made under root
    root: str | None = None  # default: runs/ at the repository root, or $ST_RUNS_DIR


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _field_types(cls) -> dict[str, object]:
    return typing.get_type_hints(cls)


def valid_keys(cls=Config, prefix: str = "") -> list[str]:
    keys = []
    for name, tp in _field_types(cls).items():
        if dataclasses.is_dataclass(tp):
            keys += valid_keys(tp, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _leaf_types(cls=Config, prefix: str = "") -> dict[str, object]:
    out = {}
    for name, tp in _field_types(cls).items():
        if dataclasses.is_dataclass(tp):
            out.update(_leaf_types(tp, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = tp
    return out


_LEAVES = _leaf_types()
_EXPECTED = {bool: "must be true or false", int: "must be a whole number", float: "must be a number",
             str: "must be a text value"}


def _scalar_type(tp):
    """(the type OmegaConf checks a value against, whether it is a list of it)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is list:
        return typing.get_args(tp)[0], True
    return tp, False


def _prepare(key: str, value, tp, shown: str):
    """The few conveniences OmegaConf does not have: a single value for a list key is a one-element list,
    a list for a text key is Lightning's comma form (training.devices=[0,1] -> "0,1"), Arc State's capitalised
    backbone names are lower-cased, and a bool is never taken for a number (OmegaConf would take True as 1)."""
    inner, is_list = _scalar_type(tp)
    if is_list and value is not None and not isinstance(value, (list, tuple)):
        value = [value]
    if inner is str and not is_list and isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    if key in _LOWER_CASE_VALUES and isinstance(value, str):
        value = value.lower()
    items = value if is_list and isinstance(value, (list, tuple)) else [value]
    for item in items:
        wrong_bool = inner in (int, float) and isinstance(item, bool)
        wrong_float = inner is int and isinstance(item, float) and not item.is_integer()
        wrong_text = inner is str and isinstance(item, dict)
        not_bool = inner is bool and not isinstance(item, bool)  # OmegaConf would take 1 or "on" for true
        if wrong_bool or wrong_float or wrong_text or not_bool:
            raise ConfigError(f"{shown} {_EXPECTED[inner]}; got {value!r}")
    if inner is int and isinstance(value, float):
        value = int(value)
    return value


def _assign(schema, dotted: str, value) -> None:
    """Set one dotted key on the OmegaConf structured config, which checks the value against the field's type."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    key = ALIASES.get(dotted, dotted)
    if key not in _LEAVES and isinstance(value, dict) and any(leaf.startswith(key + ".") for leaf in _LEAVES):
        _apply_dict(schema, value, f"{key}.")  # a whole section, e.g. run={name: x}
        return
    if key not in _LEAVES:
        _unknown(dotted)
    value = _prepare(key, value, _LEAVES[key], dotted)
    try:
        OmegaConf.update(schema, key, value, merge=False)
    except OmegaConfBaseException:
        inner, is_list = _scalar_type(_LEAVES[key])
        expected = _EXPECTED.get(inner, f"must be of type {inner}")
        if is_list:
            expected = f"must be a list (e.g. [0,1]); each item {expected}"
        raise ConfigError(f"{dotted} {expected}; got {value!r}") from None


def _unknown(key: str):
    close = difflib.get_close_matches(key, valid_keys() + list(ALIASES), n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(close)}?" if close else "; see README 'Configuration' for the keys"
    raise ConfigError(f"unknown config key '{key}'{hint}")


def _apply_dict(schema, data: dict, prefix: str = "") -> None:
    for k, v in data.items():
        dotted = f"{prefix}{k}"
        if isinstance(v, dict) and ALIASES.get(dotted, dotted) not in _LEAVES:
            _apply_dict(schema, v, f"{dotted}.")
        else:
            _assign(schema, dotted, v)


def _schema():
    """The defaults as an OmegaConf structured config over the dataclasses: every later value is type-checked."""
    from omegaconf import OmegaConf

    return OmegaConf.structured(Config)


def _to_config(schema) -> Config:
    from omegaconf import OmegaConf

    return OmegaConf.to_object(schema)


def parse_override(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value, e.g. training.max_epochs=3")
    check_text_size(text, "the override")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    except RecursionError:  # PyYAML's parser recurses once per nesting level
        raise ConfigError(f"the value of {key.strip()[:100]} is nested too deeply") from None
    check_parsed_size(value, f"the value of {key.strip()[:100]}")
    return key.strip(), value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                preset: str | None = None) -> Config:
    """Defaults, then the ``preset`` (small | gpu), then the YAML file at ``path``, then the ``key=value``
    overrides; validated."""
    cfg = _schema()
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        _apply_dict(cfg, PRESETS[preset])
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"no config file at {path}")
        if path.stat().st_size > MAX_CONFIG_FILE_BYTES:
            raise ConfigError(f"{path} is larger than {MAX_CONFIG_FILE_BYTES:,} bytes; a config is a few KB")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML ({str(err).splitlines()[0]})") from err
        except RecursionError:
            raise ConfigError(f"{path} is nested too deeply to be a config") from None
        check_parsed_size(data, str(path))
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of config keys")
        _apply_dict(cfg, data)
    for text in overrides or []:
        key, value = parse_override(text)
        _assign(cfg, key, value)
    config = _to_config(cfg)
    validate_config(config)
    return config


def config_from_dict(data: dict) -> Config:
    check_parsed_size(data, "the config")
    cfg = _schema()
    _apply_dict(cfg, data)
    config = _to_config(cfg)
    validate_config(config)
    return config


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_strategy(strategy: str) -> None:
    """A misspelt strategy would otherwise end in Lightning's own multi-line error after the data has loaded."""
    if strategy == "auto":
        return  # the default: no Lightning import just to validate it
    from lightning.pytorch.strategies import StrategyRegistry

    known = sorted(StrategyRegistry.available_strategies())
    if strategy in known:
        return
    close = difflib.get_close_matches(strategy, known, n=2)
    hint = f"; did you mean {' or '.join(close)}?" if close else " (ddp, ddp_spawn, fsdp, deepspeed, ...)"
    raise ConfigError(f"training.strategy must be auto or one of Lightning's strategies; got {strategy!r}{hint}")


def validate_config(cfg: Config) -> None:
    check_bounds(cfg)  # first: upper bounds, finite numbers, bounded text (core/config_limits.py)
    m, t, d = cfg.model.kwargs, cfg.training, cfg.data.kwargs
    _check(m.backbone in ("llama", "gpt2"), f"model.kwargs.backbone must be llama or gpt2; got {m.backbone!r}")
    _check(m.hidden_dim >= 8 and m.n_heads >= 1 and m.hidden_dim % m.n_heads == 0,
           f"model.kwargs.hidden_dim ({m.hidden_dim}) must be >= 8 and divisible by n_heads ({m.n_heads})")
    _check(m.n_layers >= 1, f"model.kwargs.n_layers must be >= 1; got {m.n_layers}")
    _check(m.cell_set_len >= 2, f"model.kwargs.cell_set_len must be >= 2; got {m.cell_set_len}")
    _check(m.dist_loss in ("energy", "sinkhorn"),
           f"model.kwargs.dist_loss must be energy or sinkhorn; got {m.dist_loss!r}")
    _check(m.blur > 0, f"model.kwargs.blur must be > 0; got {m.blur}")
    _check(m.decoder_weight >= 0, f"model.kwargs.decoder_weight must be >= 0; got {m.decoder_weight}")
    _check(m.lora.r >= 1 and m.lora.alpha > 0 and 0 <= m.lora.dropout < 1,
           "model.kwargs.lora needs r >= 1, alpha > 0 and 0 <= dropout < 1")
    _check(m.mhc.n_streams >= 2, f"model.kwargs.mhc.n_streams must be >= 2; got {m.mhc.n_streams}")
    _check(m.mhc.sinkhorn_iters >= 1, f"model.kwargs.mhc.sinkhorn_iters must be >= 1; got {m.mhc.sinkhorn_iters}")
    _check(m.mhc.lr_scale > 0, f"model.kwargs.mhc.lr_scale must be > 0; got {m.mhc.lr_scale}")
    _check(m.mhc.projection in ("sinkhorn", "permutations"),
           f"model.kwargs.mhc.projection must be sinkhorn or permutations; got {m.mhc.projection!r}")
    if m.mhc.layer_indices is not None:
        bad = [i for i in m.mhc.layer_indices if not 0 <= i < m.n_layers]
        _check(not bad and m.mhc.layer_indices,
               f"model.kwargs.mhc.layer_indices {m.mhc.layer_indices} must lie in 0..{m.n_layers - 1} "
               f"(the backbone has {m.n_layers} layers)")
    _check(m.velocity_lambda >= 0 and m.velocity_beta >= 0 and m.velocity_warmup_steps >= 0
           and m.velocity_min_confidence >= 0,
           "velocity_lambda, velocity_beta, velocity_warmup_steps and velocity_min_confidence must be >= 0")
    _check(m.velocity_warmup_fraction is None or 0 < m.velocity_warmup_fraction <= 1,
           f"model.kwargs.velocity_warmup_fraction must lie in (0, 1] (or null: use velocity_warmup_steps); "
           f"got {m.velocity_warmup_fraction}")
    _check(m.velocity_loss in ("alignment", "l2"),
           f"model.kwargs.velocity_loss must be alignment or l2; got {m.velocity_loss!r}")
    _check(t.learning_rate > 0, f"training.learning_rate must be > 0; got {t.learning_rate}")
    _check(t.max_epochs is None or t.max_epochs >= 1, f"training.max_epochs must be >= 1; got {t.max_epochs}")
    _check(t.max_steps == -1 or t.max_steps >= 1,
           f"training.max_steps must be >= 1 (or -1: no limit); got {t.max_steps}")
    _check(t.weight_decay >= 0, f"training.weight_decay must be >= 0; got {t.weight_decay}")
    _check(t.precision in (None, "32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "64-true"),
           f"training.precision must be 32-true, bf16-mixed or 16-mixed (or null: automatic); got {t.precision!r}")
    _check(t.batch_size >= 1, f"training.batch_size must be >= 1; got {t.batch_size}")
    _check(t.grad_clip >= 0, f"training.grad_clip must be >= 0; got {t.grad_clip}")
    _check(t.val_freq is None or t.val_freq >= 1, f"training.val_freq must be >= 1; got {t.val_freq}")
    _check(t.num_threads is None or t.num_threads >= 1, f"training.num_threads must be >= 1; got {t.num_threads}")
    _check(t.mhc_snapshot_every >= 1, f"training.mhc_snapshot_every must be >= 1; got {t.mhc_snapshot_every}")
    _check(t.accelerator in ("auto", "cpu", "gpu", "cuda", "mps"),
           f"training.accelerator must be auto, cpu, gpu or mps; got {t.accelerator!r}")
    _check(t.devices in ("auto", "-1") or t.devices.isdigit() and int(t.devices) >= 1
           or "," in t.devices and all(part.strip().isdigit() for part in t.devices.split(",")),
           f"training.devices must be auto, a number of devices (2: two processes under DDP, on the CPU too) or "
           f"a list of GPU ids (0,1); got {t.devices!r}")
    _check_strategy(t.strategy)
    _check(d.dataset in ("burn_sham", "atlas"), f"data.kwargs.dataset must be burn_sham or atlas; got {d.dataset!r}")
    _check(d.split in ("auto", "fraction", "batch", "cell_type"),
           f"data.kwargs.split must be auto, fraction, batch or cell_type; got {d.split!r}")
    _check(d.split != "cell_type" or bool(d.holdout),
           "data.kwargs.split=cell_type needs data.kwargs.holdout=<the cell type to hold out>")
    _check(d.holdout is None or d.split == "cell_type",
           f"data.kwargs.holdout is only used with data.kwargs.split=cell_type (split is {d.split!r})")
    _check(d.match_by in ("cell_type", "cell_type_batch"),
           f"data.kwargs.match_by must be cell_type or cell_type_batch; got {d.match_by!r}")
    _check(0 <= d.val_fraction < 0.5 and 0 <= d.test_fraction < 0.5,
           "data.kwargs.val_fraction and test_fraction must lie in [0, 0.5)")
    check_model_memory(cfg)  # the estimate of core/config_limits.py against the memory budget


def save_config(cfg: Config, path: Path) -> None:
    from core.io.atomic import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
