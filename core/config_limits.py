"""Bounds on what a configuration can make us expand, allocate or build (issue 12, points 2 and 12).

- Size after parsing: YAML anchors and aliases let 377 bytes stand for hundreds of MB once expanded
  (``a: &a [x,x,x,...]``, ``b: &b [*a,*a,...]``, ...). ``check_parsed_size`` walks the parsed value, counting
  every node and every character of text as often as aliases repeat it, and stops as soon as the count passes
  ``$ST_CONFIG_MAX_SIZE`` (default 100,000; a full config is about 1,500): the walk costs at most the limit,
  however deep the bomb. Override texts and config files are bounded in bytes before they are parsed.
- Value bounds: upper limits for sizes, finite numbers, text at most ``MAX_TEXT`` characters.
- A size estimate (parameters, optimiser state and activations for the set size) checked against the memory
  budget (core/memory_budget.py) before the model is built, so ``hidden_dim=65536`` is one line, not 17 GB.
"""

from __future__ import annotations

import dataclasses
import math
import os

from core.errors import ConfigError
from core.memory_budget import how_to_raise, human, memory_budget

SIZE_ENV = "ST_CONFIG_MAX_SIZE"
DEFAULT_MAX_SIZE = 100_000
MAX_OVERRIDE_CHARS = 10_000
MAX_CONFIG_FILE_BYTES = 1_000_000
MAX_TEXT = 4096

# (dotted key, largest allowed): far above any real model of this kind, low enough that a typo is caught.
UPPER_BOUNDS = {
    "model.kwargs.hidden_dim": 16_384,
    "model.kwargs.n_layers": 128,
    "model.kwargs.n_heads": 256,
    "model.kwargs.cell_set_len": 8192,
    "model.kwargs.lora.r": 4096,
    "model.kwargs.mhc.n_streams": 16,
    "model.kwargs.mhc.sinkhorn_iters": 10_000,
    "model.kwargs.velocity_warmup_steps": 100_000_000,
    "training.learning_rate": 10.0,  # beyond this Adam's update overflows float32 (a RuntimeError in torch)
    "training.batch_size": 8192,
    "training.max_epochs": 1_000_000,
    "training.max_steps": 1_000_000_000,
    "training.val_freq": 1_000_000_000,
    "training.num_threads": 4096,
    "training.mhc_snapshot_every": 1_000_000_000,
}
# mHC-lite mixes all n! permutation matrices: 6! = 720 is fine, 11! = 39,916,800 is not.
MAX_PERMUTATION_STREAMS = 6


def max_size() -> int:
    text = os.environ.get(SIZE_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_SIZE
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{SIZE_ENV}={text!r} must be a whole number >= 1")
    return int(text)


def check_text_size(text: str, where: str, limit: int = MAX_OVERRIDE_CHARS) -> None:
    if len(text) > limit:
        raise ConfigError(f"{where} is {len(text):,} characters long; at most {limit:,} are accepted")


def check_parsed_size(value, where: str) -> None:
    """ConfigError if ``value`` (parsed YAML) holds more than ``max_size()`` nodes and characters, counting
    aliased parts each time they appear. Iterative, so a deep structure cannot exhaust the stack."""
    limit = max_size()
    count = 0
    stack = [value]
    while stack:
        node = stack.pop()
        count += 1 + (len(node) if isinstance(node, (str, bytes)) else 0)
        if count > limit:
            raise ConfigError(
                f"{where} expands to more than {limit:,} values and characters (YAML anchors and aliases "
                f"count each time they are used); write it out plainly, or raise {SIZE_ENV}")
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)


def _get(cfg, dotted: str):
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _walk(obj, prefix: str = ""):
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _walk(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value


def check_bounds(cfg) -> None:
    """Upper bounds, finite numbers and bounded text for every value of a ``Config``."""
    for key, value in _walk(cfg):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number; got {value}")
        if isinstance(value, str) and len(value) > MAX_TEXT:
            raise ConfigError(f"{key} is {len(value):,} characters long; at most {MAX_TEXT:,} are accepted")
        if isinstance(value, list) and len(value) > 1024:
            raise ConfigError(f"{key} has {len(value):,} entries; at most 1,024 are accepted")
    for key, limit in UPPER_BOUNDS.items():
        value = _get(cfg, key)
        if value is not None and value > limit:
            raise ConfigError(f"{key} must be <= {limit:,}; got {value:,}")
    mhc = cfg.model.kwargs.mhc
    if cfg.model.kwargs.use_mhc and mhc.projection == "permutations" and mhc.n_streams > MAX_PERMUTATION_STREAMS:
        raise ConfigError(
            f"model.kwargs.mhc.n_streams={mhc.n_streams} with projection=permutations would mix "
            f"{math.factorial(mhc.n_streams):,} permutation matrices; use at most {MAX_PERMUTATION_STREAMS} "
            "streams, or projection=sinkhorn")


def estimate_training_bytes(cfg, embed_dim: int = 2048) -> int:
    """A rough upper estimate of the memory one training step needs, in bytes (fp32).

    Parameters: 16 h^2 a layer (attention 4 h^2, a LLaMA MLP of width 4h 12 h^2) plus the encoders and head
    (about 4 h (embed_dim + h)); weights, gradients and Adam's two moments are 4 copies. Activations kept for
    backward, per layer and cell: about 34 h (times the streams under mHC) plus 5 scores per head and cell
    of the set (Korthikanti et al. 2022, section 4.1, without recomputation)."""
    m, t = cfg.model.kwargs, cfg.training
    h, layers = m.hidden_dim, m.n_layers
    params = layers * 16 * h * h + 4 * h * (embed_dim + h)
    if m.use_mhc:
        params += layers * (m.mhc.n_streams * h) * (m.mhc.n_streams ** 2 + 2 * m.mhc.n_streams)
    streams = m.mhc.n_streams if m.use_mhc else 1
    tokens = t.batch_size * m.cell_set_len
    activations = layers * tokens * (34 * h * streams + 5 * m.n_heads * m.cell_set_len)
    return 4 * (4 * params + activations)


def check_model_memory(cfg, embed_dim: int = 2048) -> None:
    """ConfigError if the estimate exceeds the memory budget: said before anything is allocated."""
    need, budget = estimate_training_bytes(cfg, embed_dim), memory_budget()
    if need > budget:
        m, t = cfg.model.kwargs, cfg.training
        raise ConfigError(
            f"this model would need about {human(need)} to train (hidden_dim={m.hidden_dim}, n_layers={m.n_layers}, "
            f"cell_set_len={m.cell_set_len}, batch_size={t.batch_size}), more than the memory budget of "
            f"{human(budget)}; make it smaller, or {how_to_raise()}")
