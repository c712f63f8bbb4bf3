"""The package's import graph has no circle, counting imports inside functions too."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("solo_tf", "export")


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, pathlib.Path]:
    return {
        module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")
    }


def imported_modules(path: pathlib.Path, modules: set[str]) -> set[str]:
    """Package modules that ``path`` imports anywhere in it (``from a import b`` counts as
    ``a.b`` when that is a module, else ``a``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle of ``graph`` (module -> modules it imports), or []."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for child in sorted(graph.get(node, ())):
            if state.get(child) == 1:
                return path[path.index(child) :] + [child]
            if child not in state:
                cycle = visit(child)
                if cycle:
                    return cycle
        state[node] = 2
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_find_cycle_on_hand_made_graphs():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_the_package_has_no_import_circle():
    modules = package_modules()
    names = set(modules)
    graph = {
        name: imported_modules(path, names) - {name, name.rpartition(".")[0]}
        for name, path in modules.items()
    }
    # A package's __init__ is imported by its modules implicitly; edges to it are not circles.
    graph = {n: {m for m in deps if not n.startswith(m + ".")} for n, deps in graph.items()}
    assert "solo_tf.detector" in graph and graph["solo_tf.eval_lib"] >= {"solo_tf.detector"}
    assert find_cycle(graph) == []


def test_no_import_is_hidden_from_a_linter_rule():
    """No ``noqa: PLC0415`` (function-level import) markers: the rule is not selected, and
    function-level imports were only there to dodge import circles."""
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for package in (*PACKAGES, "tests")
        for path in (ROOT / package).rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "noqa: PLC0415" in line and path.name != "test_imports.py"
    ]
    assert offenders == []
