"""The house rules a newcomer relies on, read from the source: which module imports which (function-level imports
included, since they hide cycles from the interpreter but not from a reader), and how big a module is.

No import runs here: the files are parsed with ``ast``, so a cycle that Python resolves lazily still counts.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Source folder -> the package it installs as (pyproject's package-dir).
PACKAGES = {"spanline": "spanline", "pipeline": "spanline.pipeline", "patches": "spanline.patches"}


def _modules() -> dict[str, Path]:
    """Every module of the distribution, by its import name."""
    found: dict[str, Path] = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = [package, *path.relative_to(ROOT / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imported_names(module: str, path: Path) -> Iterator[str]:
    """Every name an import statement anywhere in the file (top level, function, ``TYPE_CHECKING``) names."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                prefix = ".".join([*base, *([node.module] if node.module else [])])
            else:
                prefix = node.module or ""
            yield prefix
            yield from (f"{prefix}.{alias.name}" for alias in node.names)


def import_graph() -> dict[str, set[str]]:
    """module -> the modules of the distribution it imports; the facade ``spanline`` and a module's own
    parent packages are left out (importing a submodule runs its package's ``__init__`` anyway)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for target in _imported_names(name, path):
            while target and target not in modules:
                target = target.rpartition(".")[0]  # ``from a.b import func``: the module is a.b
            if target and target != name and target != "spanline" and not name.startswith(target + "."):
                graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            nxt = next(edges, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_function_level_cycle() -> None:
    """The finder itself: a loop closed by an import inside a function is a cycle, a chain is not."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_graph_sees_function_level_imports(tmp_path: Path) -> None:
    """An import inside a function body and one under ``TYPE_CHECKING`` are edges like a top-level one."""
    source = tmp_path / "mod.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from spanline.pipeline import queue\n"
        "def f():\n    from spanline.patches.messages import install\n",
        encoding="utf-8",
    )
    names = set(_imported_names("spanline.x", source))
    assert {"spanline.pipeline.queue", "spanline.patches.messages.install"} <= names


def test_testing_package_is_layered() -> None:
    """``spanline.testing``, the fake users import for offline tests: no cycle inside it, nothing of spanline's
    pipeline or patches in it, every module under 400 lines and opening with what comes in and goes out."""
    graph = import_graph()
    testing = {name: deps for name, deps in graph.items() if name.startswith("spanline.testing")}
    assert testing, "spanline.testing not found"
    assert cycles(testing) == []
    for name, deps in testing.items():
        assert all(dep.startswith("spanline.testing") for dep in deps), (name, deps)
        path = _modules()[name]
        assert len(path.read_text(encoding="utf-8").splitlines()) <= 400, path
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        assert docstring and len(docstring.splitlines()) >= 2, f"{path}: no opening docstring"


def test_no_import_cycles() -> None:
    """No module of the distribution reaches itself through imports, function-level ones included."""
    assert cycles(import_graph()) == []


def _outside(module: str, path: Path, allowed: tuple[str, ...]) -> set[str]:
    """What ``module`` imports of spanline's own modules that is not under one of ``allowed``."""
    names = set(_imported_names(module, path))
    own = {n for n in names if n == "spanline" or n.startswith("spanline.")}
    return {n for n in own if not any(n == a or n.startswith(a + ".") for a in allowed)}


def test_pipeline_imports_nothing_above_it() -> None:
    """``pipeline/`` is the bottom layer: it never imports the facade (``spanline``, ``spanline._runtime``, ...)
    nor ``patches/``, at any level of a function."""
    found = {name: _outside(name, path, ("spanline.pipeline",))
             for name, path in _modules().items() if name.startswith("spanline.pipeline")}
    assert {name: names for name, names in found.items() if names} == {}


def test_assembly_runs_one_way() -> None:
    """Decode, fold into a span, convert to MLflow's shape: the assembler calls ``surfaces`` and ``streams``, they
    call ``convert``; none of them imports a module above it on that way (function-level imports included)."""
    below = {
        "spanline.pipeline.convert": {"spanline.pipeline.assembler", "spanline.pipeline.surfaces",
                                      "spanline.pipeline.streams"},
        "spanline.pipeline.surfaces": {"spanline.pipeline.assembler", "spanline.pipeline.streams"},
        "spanline.pipeline.streams": {"spanline.pipeline.assembler", "spanline.pipeline.surfaces"},
        "spanline.pipeline.policy": {"spanline.pipeline.convert", "spanline.pipeline.assembler"},
    }
    modules = _modules()
    found = {name: set(_imported_names(name, modules[name])) & above for name, above in below.items()}
    assert {name: names for name, names in found.items() if names} == {}


def test_no_test_file_imports_another() -> None:
    """Tests share code through helper modules (``helpers``, ``logwriters``, ``browser_surfaces``, ...), never by
    importing a test file: importing one runs its module-level set-up and makes pytest's files depend on each
    other's order."""
    tests = ROOT / "tests"
    test_files = {p.stem for p in tests.glob("test_*.py")}
    found = []
    for path in sorted(tests.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            found += [f"{path.name} imports {name}" for name in names if name.split(".")[0] in test_files]
    assert found == []
