"""The package's imports point one way: wire formats and pure policy at the bottom,
adapters above them, composition on top. Any cycle between callbridge's modules fails here,
lazy imports (inside functions) included; imports under `TYPE_CHECKING` are left out, as
they never run."""

from __future__ import annotations

import ast
from pathlib import Path

import callbridge

PACKAGE_DIR = Path(callbridge.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, modules: set[str], this: str) -> set[str]:
    """The package's modules that `tree` imports when it runs."""
    found: set[str] = set()
    is_package = (PACKAGE_DIR.parent / this.replace(".", "/") / "__init__.py").exists()
    package = this if is_package else this.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                _add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"  # `from package import module`
                _add(submodule if submodule in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    def _add(name: str) -> None:
        while name:
            if name in modules:
                if name != this:
                    found.add(name)
                return
            name = name.rpartition(".")[0]

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = [p for p in PACKAGE_DIR.rglob("*.py") if "migrations" not in p.parts]
    modules = {_module_name(p): p for p in paths}
    return {
        name: _imports(ast.parse(path.read_text()), set(modules), name)
        for name, path in modules.items()
    }


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                connect(target)
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
            connect(node)
    return cycles


def test_find_cycles_sees_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]


def _subpackage(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_module_imports_have_no_cycle() -> None:
    cycles = find_cycles(import_graph())
    assert cycles == [], "import cycles inside callbridge: " + "; ".join(
        " <-> ".join(cycle) for cycle in cycles
    )


def test_subpackage_imports_have_no_cycle() -> None:
    """`agent` importing `fast_path` while `fast_path` imports `agent` is a cycle too."""
    graph: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        own = _subpackage(module)
        graph.setdefault(own, set()).update(
            _subpackage(t) for t in targets if _subpackage(t) != own
        )
    cycles = find_cycles(graph)
    assert cycles == [], "import cycles between callbridge's packages: " + "; ".join(
        " <-> ".join(cycle) for cycle in cycles
    )
