"""How much memory one input may make us allocate: the budget that .h5ad shapes and model size estimates are
checked against before anything is read or built (issue 12, points 3 and 12).

``$ST_MEMORY_BUDGET`` sets it in bytes (suffixes K, M, G, T allowed: ``ST_MEMORY_BUDGET=8G``); otherwise it is
``$ST_MEMORY_FRACTION`` (default 0.5) of the machine's total RAM. Half of RAM leaves room for the app, the OS
and the copies anndata and torch make on top of what a file declares.
"""

from __future__ import annotations

import os
import re

from core.errors import ConfigError

BUDGET_ENV = "ST_MEMORY_BUDGET"
FRACTION_ENV = "ST_MEMORY_FRACTION"
DEFAULT_FRACTION = 0.5
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _total_ram() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:  # psutil missing or no /proc: assume a small machine rather than none
        return 8 * 2**30


def parse_size(text: str, env: str) -> int:
    """``8G``, ``500M``, ``1.5T``, ``4096`` -> bytes; ``ConfigError`` naming ``env`` otherwise."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?", text.strip(), flags=re.IGNORECASE)
    if not match:
        raise ConfigError(f"{env}={text!r} is not a size; write e.g. 8G or 500M")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def memory_budget() -> int:
    """The budget in bytes (see the module docstring); a malformed setting is a one-line ``ConfigError``."""
    text = os.environ.get(BUDGET_ENV, "").strip()
    if text:
        return parse_size(text, BUDGET_ENV)
    fraction_text = os.environ.get(FRACTION_ENV, "").strip()
    try:
        fraction = float(fraction_text) if fraction_text else DEFAULT_FRACTION
    except ValueError:
        raise ConfigError(f"{FRACTION_ENV}={fraction_text!r} is not a number; write e.g. 0.5") from None
    if not 0 < fraction <= 1:
        raise ConfigError(f"{FRACTION_ENV} must lie in (0, 1]; got {fraction}")
    return int(_total_ram() * fraction)


def human(n_bytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n_bytes) < 1024 or unit == "TB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.1f} TB"


def how_to_raise() -> str:
    return f"set {BUDGET_ENV} (e.g. {BUDGET_ENV}=32G) or {FRACTION_ENV} to allow more"
