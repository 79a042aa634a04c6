"""The package's import structure (issue 11): layers point one way, no cycles, no private names.

Read statically from the source (every ``import`` and ``from ... import``, function-level ones
included), so a late import that would hide a cycle at run time is still seen.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "migu"
# Lower layers never import higher ones (same layer: allowed, as long as no cycle forms).
LAYERS = {
    "validation": 0,
    "engine": 0,
    "metrics": 0,
    "data": 0,
    "methods": 0,
    "models": 1,
    "evals": 1,
    "runner": 2,
    "analysis": 3,
    "grid": 4,
    "cli": 5,
    "migu": 6,  # the package __init__: the public API
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module imported, names imported from it) of every import statement in ``path``."""
    tree = ast.parse(path.read_text())
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: list[tuple[str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("migu")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("migu"):
                out.append((mod, [a.name for a in node.names]))
    return out


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "migu"


MODULES = {_module_name(p): p for p in SRC.rglob("*.py")}


def test_every_package_has_a_layer() -> None:
    tops = {_top(m) for m in MODULES}
    assert tops <= set(LAYERS), f"add {sorted(tops - set(LAYERS))} to LAYERS"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_and_use_public_names(module: str) -> None:
    mine = _top(module)
    for target, names in _imports(MODULES[module]):
        theirs = _top(target)
        if theirs == mine:
            continue
        assert LAYERS[theirs] <= LAYERS[mine], f"{module} (layer {mine}) imports {target} (layer {theirs})"
        private = [n for n in names if n.startswith("_")]
        assert not private, f"{module} imports private {private} from {target}"
        assert not any(p.startswith("_") for p in target.split(".")[1:]), f"{module} imports {target}"


def test_no_import_cycle_between_modules() -> None:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        deps = set()
        for target, names in _imports(path):
            # ``from pkg import sub`` depends on pkg.sub when sub is a module
            subs = {f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES}
            deps |= subs or ({target} if target in MODULES else set())
        graph[module] = deps - {module}
    # A package's __init__ re-exporting its modules is not a cycle with them: drop edges
    # from a module to its own package's __init__ (it imports the sibling modules directly).
    for module, deps in graph.items():
        graph[module] = {d for d in deps if not (module.startswith(d + ".") and d in MODULES)}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycle = [*stack[stack.index(d) :], d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_every_source_folder_is_a_package() -> None:
    """A folder without __init__.py is a namespace package: setuptools' find leaves it out of the wheel."""
    folders = {p.parent for p in SRC.rglob("*.py")}
    missing = sorted(str(f.relative_to(SRC.parent)) for f in folders if not (f / "__init__.py").is_file())
    assert not missing, f"add __init__.py to {missing}"
