"""The code is layered: a module imports only from its own layer or the layers below it, and nothing imports in a
cycle. Function-level imports count as much as top-level ones (they hid two cycles before the layout move).

    0 core.errors, core.paths, core.keys, core.progress, core.memory_budget   what everything may use
    1 core.io                                 atomic writes, checkpoints
    2 core.config, core.config_limits         the typed config and its bounds
    3 core.mhc, core.velocity                 the science, on tensors and AnnData
    4 core.data                               data sets, mapping, validation
    5 core.model                              the ST model and its builder (never trains)
    6 core.arc                                reading Arc State folders into our model family
    7 core.runs                               run folders: layout, writer, reader, launcher
    8 core.training                           the Lightning module, data, trainer, demo base
    9 core.infer, core.evaluation, core.experiment, core.arc.{commands,sampling,export}
   10 core.figures                            plotly figures from runs
   11 core.api, core.pl, core.cli, core.__main__, core (the public API and the command line)
   12 app.cache, app.state                    the app's cached loaders and its typed session state
   13 app                                     the Streamlit UI
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = [
    ("core.errors", "core.paths", "core.keys", "core.progress", "core.memory_budget"),
    ("core.io",),
    ("core.config", "core.config_limits"),
    ("core.mhc", "core.velocity"),
    ("core.data",),
    ("core.model",),
    ("core.arc",),
    ("core.runs",),
    ("core.training",),
    ("core.infer", "core.evaluation", "core.experiment", "core.arc.commands", "core.arc.sampling",
     "core.arc.export"),
    ("core.figures",),
    ("core.api", "core.pl", "core.cli", "core.__main__", "core"),
    ("app.cache", "app.state"),
    ("app",),
]


def _layer(module: str) -> int:
    best, rank = -1, None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            # "core" names the package's own __init__ only: a new top-level module must be given a layer
            below = prefix != "core" and module.startswith(prefix + ".")
            if (module == prefix or below) and len(prefix) > best:
                best, rank = len(prefix), index
    assert rank is not None, f"{module} is in no layer; add it to LAYERS in {__file__}"
    return rank


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its body (resolved to existing modules)."""
    files = [p for top in ("core", "app") for p in (ROOT / top).rglob("*.py")]
    modules = {_module_name(p): p for p in files}
    graph = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".")[: len(name.split(".")) - node.level + int(is_package)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                candidates = [stem] + [f"{stem}.{alias.name}" for alias in node.names]
            else:
                continue
            for candidate in candidates:
                # the longest existing module the name refers to ("core.runs.read_status" -> "core.runs")
                while candidate and candidate not in modules:
                    candidate = candidate.rpartition(".")[0]
                if candidate and candidate != name:
                    targets.add(candidate)
        graph[name] = targets
    return graph


def test_every_module_imports_only_from_its_own_layer_or_below():
    upward = sorted(
        f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"
        for module, targets in _imports().items()
        for target in targets
        # a package's __init__ may re-export its own submodules
        if _layer(target) > _layer(module) and not target.startswith(module + ".")
    )
    assert not upward, "\n".join(upward)


def test_no_import_cycle_between_modules():
    graph = _imports()
    for module in graph:  # a package importing its own submodules is not a cycle through the package
        graph[module] = {t for t in graph[module] if not (t.startswith(module + ".") or module.startswith(t + "."))}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert not cycles, f"import cycles: {cycles}"


def test_the_layer_check_sees_function_level_imports():
    # the cycle test is only worth something if it reads imports inside functions
    graph = _imports()
    assert "core.velocity.pipeline" in graph["core.cli.velocity"]
