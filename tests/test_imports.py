"""The project's packages import each other without a cycle.

The graph is read from the source with `ast`: every `import` and `from ... import` of a project module, at
module level or inside a function (a function-local import only postpones a cycle to the first call).
An edge goes to the module named; `from package import name` goes to package.name when that is a module.
"""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("pgolf", "space", "objectives", "search")


def project_modules() -> dict[str, str]:
    """Dotted module name -> source path, for every .py file of the project's packages."""
    modules = {}
    for package in PACKAGES:
        for folder, dirs, files in os.walk(os.path.join(ROOT, package)):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for file in sorted(files):
                if file.endswith(".py"):
                    parts = os.path.relpath(os.path.join(folder, file), ROOT)[:-3].split(os.sep)
                    modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = os.path.join(folder, file)
    return modules


def imported_modules(name: str, path: str, modules: dict[str, str]) -> set[str]:
    """The project modules that module `name` (source at `path`) imports anywhere in its body."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1 packages
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each as one cycle through it."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [cycle_through(graph, set(c)) for c in components]


def cycle_through(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """One cycle inside a strongly connected component: start -> ... -> start (breadth-first, shortest)."""
    start = min(component)
    paths = {w: [start, w] for w in sorted(graph[start]) if w in component}
    frontier = list(paths)
    while start not in paths:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w in component and w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
                if w == start and start not in paths:
                    paths[start] = paths[v] + [start]
        frontier = nxt
    return paths[start]


def test_the_graph_sees_module_level_function_local_and_relative_imports(tmp_path):
    package = tmp_path / "demo"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("import demo.b\n")
    (package / "b.py").write_text("def f():\n    from . import c\n")
    (package / "c.py").write_text("from demo.a import thing\n")
    modules = {"demo": str(package / "__init__.py"), **{f"demo.{m}": str(package / f"{m}.py") for m in "abc"}}
    graph = {name: imported_modules(name, path, modules) for name, path in modules.items()}
    assert graph == {"demo": set(), "demo.a": {"demo.b"}, "demo.b": {"demo.c"}, "demo.c": {"demo.a"}}
    assert cycles(graph) == [["demo.a", "demo.b", "demo.c", "demo.a"]]


def test_the_project_has_no_import_cycle():
    graph = import_graph()
    assert {"pgolf.cli", "search.cli", "search.submit.export", "space.spec", "objectives.bytes"} <= set(graph)
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)
