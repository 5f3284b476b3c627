"""The package layout is the architecture: nothing flat in the root, layers that only point
down, and no import cycle between modules (lazy imports inside functions included)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cnntools"

# Lowest first. A package may import its own layer's package and any lower layer, never a
# higher one nor a sibling on its own layer.
LAYERS = [
    ["core"],  # errors and exit codes, device/precision/threads
    ["output"],  # the emitter, files, plots, progress
    ["data", "models", "schemas"],
    ["calc"],  # rf-calc --arch walks a registered model
    ["inference"],
    ["checkpoint"],
    ["interpret", "training"],
    ["cli"],  # the app and the commands: nothing below imports it
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def import_graph() -> dict[str, set[str]]:
    """Module -> the cnntools modules it imports anywhere in its text."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        module = _module_name(path)
        graph[module]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("cnntools"):
                names = [f"{node.module}.{alias.name}" for alias in node.names]
                targets = [n for n in names if _is_module(n)] or [node.module]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names if alias.name.startswith("cnntools")]
            else:
                continue
            graph[module].update(t for t in targets if _is_module(t) and t != module and t != "cnntools")
    return graph


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_root_holds_only_init_and_main():
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert modules == ["__init__.py", "__main__.py"]
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert packages == sorted(RANK), "a new package needs its place in LAYERS"


def test_layers_only_point_down():
    upward = []
    for module, targets in import_graph().items():
        source = _package(module)
        if source not in RANK:  # cnntools.__main__ starts the CLI
            continue
        for target in targets:
            goal = _package(target)
            if goal != source and RANK[goal] >= RANK[source]:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that point up or sideways:\n" + "\n".join(sorted(upward))


def test_nothing_outside_cli_imports_the_cli():
    offenders = [f"{m} -> {t}" for m, ts in import_graph().items() for t in ts
                 if _package(t) == "cli" and _package(m) != "cli" and m != "cnntools.__main__"]
    assert not offenders


def test_no_import_cycle_between_modules():
    graph = import_graph()
    # A package's __init__ that re-exports its own modules is not a cycle of logic; leave
    # those edges out (a parent package is always imported before its modules).
    edges = {m: {t for t in ts if not (t.startswith(m + ".") or m.startswith(t + "."))} for m, ts in graph.items()}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in list(edges):
        if node not in index:
            visit(node)
    assert not cycles, f"import cycles: {cycles}"


def test_the_graph_sees_lazy_imports():
    # The checker must see imports inside functions, where the heavy ones live.
    graph = import_graph()
    assert "cnntools.core.errors" in graph["cnntools.core.runtime"]
    assert any(t.startswith("cnntools.cli.commands") for t in graph["cnntools.cli.app"])


# Commands check their options, call one library function and render: a `main` body (after its
# docstring, which is the --help text) longer than this holds work a library function should do.
MAIN_BODY_LINES = 60


def test_command_mains_stay_short():
    long = {}
    for path in sorted((PACKAGE / "cli" / "commands").glob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef) and node.name == "main":
                body = node.body
                if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                    body = body[1:]
                lines = node.end_lineno - body[0].lineno + 1
                if lines > MAIN_BODY_LINES:
                    long[path.stem] = lines
    assert not long, f"command mains over {MAIN_BODY_LINES} lines (move the work into a library function): {long}"


def test_hooks_are_registered_only_by_the_hook_holder():
    allowed = {PACKAGE / "inference" / "hooks.py"}
    kinds = ("register_forward_hook", "register_forward_pre_hook", "register_full_backward_hook", "register_backward_hook")
    offenders = [str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                 if path not in allowed and any(kind in path.read_text(encoding="utf-8") for kind in kinds)]
    assert not offenders, f"hooks registered outside cnntools/inference/hooks.py: {offenders}"
