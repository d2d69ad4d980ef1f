"""The layout docs/architecture.md promises, read from the source: the core imports no web, queue
or CLI library and no shell; first-party imports form no circle; no module grows past 500 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("exemplar", "app", "worker", "index_builder")
SHELLS = ("app", "worker", "index_builder")
CORE_FORBIDDEN = ("fastapi", "starlette", "redis", "rq", "typer", "uvicorn", *SHELLS)
MAX_LINES = 500
SIZE_LIMITED = ("exemplar", "app", "worker")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def imports(name: str) -> set[str]:
    """Every module `name` imports, anywhere in its file (lazy imports included): for
    `from a.b import c` that is `a.b.c` when it is a first-party module, else `a.b`."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return found


def first_party_graph() -> dict[str, set[str]]:
    return {name: {m for m in imports(name) if m in MODULES and m != name} for name in MODULES}


def test_the_import_reader_sees_a_known_edge() -> None:
    graph = first_party_graph()
    assert "exemplar.strategies" in graph["exemplar.explain"]
    assert "exemplar.store" in graph["exemplar.estimators"]


@pytest.mark.parametrize("name", [n for n in MODULES if n.split(".")[0] == "exemplar"])
def test_the_core_imports_no_web_queue_or_cli_library_and_no_shell(name: str) -> None:
    bad = sorted(m for m in imports(name) if m.split(".")[0] in CORE_FORBIDDEN)
    assert bad == [], f"{name} imports {bad}: the core must not depend on a shell or its libraries"


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph` (module -> modules it imports) as a path that ends where it
    starts, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state and (found := visit(name)):
            return found
    return None


def test_find_circle_finds_one() -> None:
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    assert find_circle({"p": {"p.x"}, "p.x": {"p"}}) == ["p", "p.x", "p"]  # a submodule importing its package


def test_first_party_imports_form_no_circle() -> None:
    circle = find_circle(first_party_graph())
    assert circle is None, "import circle: " + " -> ".join(circle or [])


@pytest.mark.parametrize("name", [n for n in MODULES if n.split(".")[0] in SIZE_LIMITED])
def test_no_module_is_over_500_lines(name: str) -> None:
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines: split it along a role (docs/architecture.md)"
