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
    velocity_beta: float = 1.0
    velocity_warmup_steps: int = 50
    velocity_min_confidence: float = 0.0
    velocity_loss: str = "alignment"  # or "l2"


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
    split: str = "fraction"  # fraction (within each cell type) | batch (hold out whole batches, e.g. mice)
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


def _coerce(key: str, value, tp):
    """value (already YAML-parsed) -> tp, or ConfigError naming the key and the expected type."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is list:
        if isinstance(value, (int, str)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list (e.g. [0,1]); got {value!r}")
        return [_coerce(key, v, args[0]) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false; got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key} must be a whole number; got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                return float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{key} must be a number; got {value!r}") from None
        return float(value)
    if tp is str:
        if isinstance(value, (list, tuple)):  # e.g. training.devices=[0,1] -> "0,1", as Lightning reads it
            return ",".join(str(v) for v in value)
        if value is None or isinstance(value, dict):
            raise ConfigError(f"{key} must be a text value; got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {tp}")


def _set(cfg, dotted: str, value) -> None:
    key = ALIASES.get(dotted, dotted)
    parts = key.split(".")
    target = cfg
    for part in parts[:-1]:
        if not dataclasses.is_dataclass(target) or not hasattr(target, part):
            _unknown(dotted)
        target = getattr(target, part)
    types_ = _field_types(type(target)) if dataclasses.is_dataclass(target) else {}
    if parts[-1] not in types_ or dataclasses.is_dataclass(types_[parts[-1]]):
        if isinstance(value, dict) and parts[-1] in types_:
            for sub, v in value.items():
                _set(cfg, f"{key}.{sub}", v)
            return
        _unknown(dotted)
    value = _coerce(dotted, value, types_[parts[-1]])
    if key in _LOWER_CASE_VALUES and isinstance(value, str):
        value = value.lower()
    setattr(target, parts[-1], value)


def _unknown(key: str):
    close = difflib.get_close_matches(key, valid_keys() + list(ALIASES), n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(close)}?" if close else "; see README 'Configuration' for the keys"
    raise ConfigError(f"unknown config key '{key}'{hint}")


def _apply_dict(cfg: Config, data: dict, prefix: str = "") -> None:
    for k, v in data.items():
        dotted = f"{prefix}{k}"
        if isinstance(v, dict) and ALIASES.get(dotted, dotted) not in valid_keys():
            _apply_dict(cfg, v, f"{dotted}.")
        else:
            _set(cfg, dotted, v)


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
    cfg = Config()
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
        _set(cfg, key, value)
    validate_config(cfg)
    return cfg


def config_from_dict(data: dict) -> Config:
    check_parsed_size(data, "the config")
    cfg = Config()
    _apply_dict(cfg, data)
    validate_config(cfg)
    return cfg


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


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
    _check(m.lora.r >= 1 and m.lora.alpha > 0 and 0 <= m.lora.dropout < 1,
           "model.kwargs.lora needs r >= 1, alpha > 0 and 0 <= dropout < 1")
    _check(m.mhc.n_streams >= 2, f"model.kwargs.mhc.n_streams must be >= 2; got {m.mhc.n_streams}")
    _check(m.mhc.sinkhorn_iters >= 1, f"model.kwargs.mhc.sinkhorn_iters must be >= 1; got {m.mhc.sinkhorn_iters}")
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
    _check(d.dataset in ("burn_sham", "atlas"), f"data.kwargs.dataset must be burn_sham or atlas; got {d.dataset!r}")
    _check(d.split in ("fraction", "batch"), f"data.kwargs.split must be fraction or batch; got {d.split!r}")
    _check(d.match_by in ("cell_type", "cell_type_batch"),
           f"data.kwargs.match_by must be cell_type or cell_type_batch; got {d.match_by!r}")
    _check(0 <= d.val_fraction < 0.5 and 0 <= d.test_fraction < 0.5,
           "data.kwargs.val_fraction and test_fraction must lie in [0, 0.5)")
    check_model_memory(cfg)  # the estimate of core/config_limits.py against the memory budget


def save_config(cfg: Config, path: Path) -> None:
    from core.runs import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
