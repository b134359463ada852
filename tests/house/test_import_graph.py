"""The package's import graph has no circles, counting imports inside functions.

Every module of ``captum_coar`` is parsed with ``ast`` (nothing is imported). An edge ``a -> b``
is any ``import`` / ``from ... import`` statement in ``a`` that names ``b`` -- at module level,
inside a function or class, or under ``if TYPE_CHECKING:`` alike; ``from pkg import name``
points at ``pkg.name`` when that is a module, else at ``pkg``. The implicit import of a parent
package (importing ``a.b.c`` runs ``a/__init__.py``) is not counted: every module would then
sit in one circle with the package root, which re-exports the public names.

A circle is a strongly connected component of two or more modules. A circle left open on
purpose would be named in :data:`OPEN_CIRCLES` with its reason; there is none (the last one,
components <-> selectors <-> _transformers, closed when the module utilities moved to the leaf
``_modules`` and the selectors began registering themselves with ``ComponentSet.from_model``).
"""

import ast
import textwrap
from pathlib import Path
from typing import Dict, List, Set, Tuple

import captum_coar

PACKAGE = Path(captum_coar.__file__).parent

#: Circles still open, by name, with why; a found circle must lie inside one of them.
OPEN_CIRCLES: Dict[str, Tuple[str, Set[str]]] = {}

Edges = Dict[str, Dict[str, int]]  # module -> imported module -> line of the first import


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path) -> Edges:
    """Edges between the modules of the package at ``root`` (see the module docstring)."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    edges: Edges = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: Dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: List[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base
                           for a in node.names]
            for target in targets:
                if target in files and target != name:
                    found.setdefault(target, node.lineno)
        edges[name] = found
    return edges


def circles(edges: Edges) -> List[Set[str]]:
    """Strongly connected components of two or more modules (Tarjan, iterative)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[Set[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(component)
    return found


def describe(component: Set[str], edges: Edges) -> str:
    """One concrete circle through the component, with the line of each import."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:  # breadth first, inside the component, back to start
        nxt = []
        for node in frontier:
            for child in sorted(edges[node]):
                if child == start:
                    cycle = paths[node] + [start]
                    return " -> ".join(f"{a} (line {edges[a][b]})"
                                       for a, b in zip(cycle, cycle[1:])) + f" -> {start}"
                if child in component and child not in paths:
                    paths[child] = paths[node] + [child]
                    nxt.append(child)
        frontier = nxt
    return ", ".join(sorted(component))


def unexpected(edges: Edges) -> List[str]:
    allowed = [members for _, members in OPEN_CIRCLES.values()]
    return [describe(c, edges) for c in circles(edges) if not any(c <= a for a in allowed)]


def test_no_new_circles():
    found = unexpected(import_graph(PACKAGE))
    assert not found, "import circles (imports inside functions count):\n" + "\n".join(found)


def test_no_circles_at_all():
    found = [describe(c, import_graph(PACKAGE)) for c in circles(import_graph(PACKAGE))]
    assert not found, "\n".join(found)


def test_the_circles_once_open_in_coar_stay_closed():
    edges = import_graph(PACKAGE)
    assert "captum_coar.coar.estimator" not in edges["captum_coar.coar.adaptive"]
    assert "captum_coar" not in edges["captum_coar.coar._settings"]  # the version: _version
    assert not any(target.startswith("captum_coar.coar")
                   for target in edges["captum_coar.stores"])


def test_the_data_model_and_the_module_utilities_stay_below_the_selectors():
    edges = import_graph(PACKAGE)
    assert set(edges["captum_coar.components"]) == {
        "captum_coar._checks", "captum_coar._deprecation", "captum_coar._group",
        "captum_coar._modules"}
    for leaf in ("captum_coar._modules", "captum_coar._deprecation", "captum_coar._group"):
        assert edges[leaf] == {}, leaf
    assert "captum_coar.ablation" not in edges["captum_coar.experts"]


def _package(tmp_path: Path, files: Dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def test_the_check_finds_a_circle_through_a_function_and_type_checking(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "from .a import f\n",
        "a.py": "from .sub import b\ndef f():\n    return b\n",
        "sub/__init__.py": "",
        "sub/b.py": "def g():\n    from .. import a  # inside a function\n    return a\n",
        "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .d import D\n",
        "d.py": "from pkg import c\n",
        "e.py": "import pkg.a\n",  # into the circle, not part of it
    })
    edges = import_graph(root)
    assert edges["pkg.sub.b"] == {"pkg.a": 2} and edges["pkg.e"] == {"pkg.a": 1}
    found = sorted(sorted(c) for c in circles(edges))
    assert found == [["pkg.a", "pkg.sub.b"], ["pkg.c", "pkg.d"]]
    assert describe({"pkg.a", "pkg.sub.b"}, edges) == \
        "pkg.a (line 1) -> pkg.sub.b (line 2) -> pkg.a"
    assert unexpected(edges)  # none of them is an open circle of captum_coar
