"""Sub-commands of ``python -m core``.

Each module in this package that defines ``COMMAND`` (its name), ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int`` becomes a sub-command; nothing needs registering.
"""

import importlib
import pkgutil


def discover():
    """Yield the sub-command modules of this package, sorted by command name."""
    modules = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "COMMAND"):
            modules.append(module)
    return sorted(modules, key=lambda m: m.COMMAND)
