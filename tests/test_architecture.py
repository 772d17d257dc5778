"""The shape of the package: no import cycles between refface modules, and lower layers never import upper ones.

Every module under src/refface is parsed (not imported) and every import statement in it counts, at module level
or inside a function: a lazy import inside a function is still a dependency, and a cycle through one is still a
cycle. `from refface.pkg import name` is an edge to the module `refface.pkg.name` when that is a module, else to
`refface.pkg`; `import refface.a.b` is an edge to `refface.a.b` only, not to the packages above it.
"""

from __future__ import annotations

import ast
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "refface"

# (lower layer, upper layers it must never import)
UPPER = ("face", "data", "cli", "web", "comfyui", "evaluation", "train", "methods", "restoration")
LAYERS = (
    ("refface.models", (*UPPER, "pipelines", "speedups")),  # the model files know nothing of the speed-ups
    ("refface.speedups", (*UPPER, "pipelines", "models")),  # stand-ins for diffusers modules, beside the models
    ("refface.pipelines", ("cli", "web", "comfyui", "evaluation", "train", "methods")),
    ("refface.face", ("data", "cli", "web", "comfyui", "restoration", "video")),
    # the photo given back (scale, background, tone, file): below the faces, beside nothing of the models
    ("refface.photo", (*UPPER, "pipelines", "models", "speedups", "video", "export")),
    # ONNX export: the models and the ReF-LDM pipeline, nothing of the workflow or the front ends
    ("refface.export", ("face", "data", "cli", "web", "comfyui", "evaluation", "train", "methods", "restoration")),
    # reading, tracking and writing clips: faces yes; no models, no workflow
    ("refface.video", tuple(layer for layer in (*UPPER, "pipelines", "models", "speedups") if layer != "face")),
    # the method registry: the pipelines' light base and, inside functions, the pipelines; nothing of the workflow
    ("refface.methods", ("face", "data", "cli", "web", "comfyui", "evaluation", "train", "restoration", "video")),
    # the workflow the front ends call: methods by name from the registry, never a front end
    ("refface.restoration", ("data", "cli", "web", "comfyui", "evaluation", "train")),
    # front ends: none re-implements another's work or calls it
    ("refface.comfyui", ("cli", "web")),
    ("refface.web", ("cli", "comfyui")),
)


def module_names(root: Path = SOURCE) -> dict[str, Path]:
    """Dotted name -> file of every refface module (a package is named by its `__init__.py`)."""
    modules = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The refface module `name` names: itself, or the nearest enclosing module (for `import pkg.attr`)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[tuple[str, int]]:
    """(imported refface module, line) for every import statement in the file, at any depth."""
    package = module if _is_package(path) else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = []
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.append(submodule if submodule in modules else base)
        else:
            continue
        for target in targets:
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                resolved = _resolve(target, modules)
                if resolved is not None and resolved != module:
                    found.add((resolved, node.lineno))
    return found


def import_graph(root: Path = SOURCE) -> tuple[dict[str, dict[str, int]], dict[str, Path]]:
    """module -> {imported module: first line importing it} over all refface modules."""
    modules = module_names(root)
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        edges: dict[str, int] = {}
        for target, line in sorted(imports_of(module, path, modules)):
            edges.setdefault(target, line)
        graph[module] = edges
    return graph, modules


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (as a closed chain a -> ... -> a) per strongly connected component with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(start: str) -> None:  # iterative Tarjan
        work = [(start, iter(sorted(graph.get(start, {}))))]
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
                    work.append((child, iter(sorted(graph.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            connect(module)
    return [_cycle_in(component, graph) for component in components]


def _cycle_in(component: list[str], graph: dict[str, dict[str, int]]) -> list[str]:
    """The shortest chain from the component's first module back to itself (breadth-first)."""
    members = set(component)
    start = component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child not in members:
                    continue
                if child == start:
                    chain = [node]
                    while chain[-1] != start:
                        chain.append(previous[chain[-1]])
                    return [start, *reversed(chain[:-1]), start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle in the component {component}")  # pragma: no cover


def show_chain(
    chain: list[str], graph: dict[str, dict[str, int]], modules: dict[str, Path], root: Path = SOURCE
) -> str:
    """The chain one module per line, each step with the file and line of its import."""
    steps = [chain[0]]
    for here, there in zip(chain, chain[1:], strict=False):
        where = modules[here].relative_to(root)
        steps.append(f"  -> {there}   ({where}:{graph[here][there]})")
    return "\n".join(steps)


def layer_violations(graph: dict[str, dict[str, int]], modules: dict[str, Path], root: Path = SOURCE) -> list[str]:
    problems = []
    for lower, uppers in LAYERS:
        banned = tuple(f"{PACKAGE}.{upper}" for upper in uppers)
        for module, edges in sorted(graph.items()):
            if module != lower and not module.startswith(lower + "."):
                continue
            for target, line in sorted(edges.items()):
                if any(target == upper or target.startswith(upper + ".") for upper in banned):
                    where = modules[module].relative_to(root)
                    problems.append(f"{module} imports {target} ({where}:{line}); {lower} must not import {banned}")
    return problems


def test_the_source_tree_is_found() -> None:
    graph, _ = import_graph()
    assert {"refface", "refface.errors", "refface.models.unet", "refface.face.arcface"} <= set(graph)
    assert "refface.errors" in graph["refface.face.arcface"]


def test_no_module_imports_itself_through_a_chain() -> None:
    graph, modules = import_graph()
    cycles = find_cycles(graph)
    assert not cycles, "Import cycles between refface modules:\n\n" + "\n\n".join(
        show_chain(chain, graph, modules) for chain in cycles
    )


def test_lower_layers_do_not_import_upper_layers() -> None:
    graph, modules = import_graph()
    problems = layer_violations(graph, modules)
    assert not problems, "Upward imports:\n" + "\n".join(problems)


# ------------------------------------------------------------------------- the checker itself, on a toy tree
def _toy_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / PACKAGE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_the_checker_sees_lazy_cycles_and_upward_imports(tmp_path: Path) -> None:
    root = _toy_tree(
        tmp_path,
        {
            "__init__.py": "from refface.models import a\n",
            "errors.py": "",
            "models/__init__.py": "",
            "models/a.py": "from refface.errors import X\n\ndef f():\n    from refface.models import b\n",
            "models/b.py": "import refface.models.a as a\nfrom refface.face.c import Y\n",
            "face/__init__.py": "",
            "face/c.py": "from . import d\n",
            "face/d.py": "from .c import Z\nfrom refface import errors\n",
        },
    )
    graph, modules = import_graph(root)
    assert graph["refface.models.a"] == {"refface.errors": 1, "refface.models.b": 4}
    assert graph["refface.face.c"] == {"refface.face.d": 1}
    assert set(graph["refface.face.d"]) == {"refface.face.c", "refface.errors"}  # not the `refface` package
    assert sorted(find_cycles(graph)) == [
        ["refface.face.c", "refface.face.d", "refface.face.c"],
        ["refface.models.a", "refface.models.b", "refface.models.a"],
    ]
    assert layer_violations(graph, modules, tmp_path) == [
        "refface.models.b imports refface.face.c (refface/models/b.py:2); refface.models must not import "
        f"{tuple(f'refface.{upper}' for upper in LAYERS[0][1])}"
    ]
    assert show_chain(find_cycles(graph)[1], graph, modules, tmp_path) == (
        "refface.models.a\n"
        "  -> refface.models.b   (refface/models/a.py:4)\n"
        "  -> refface.models.a   (refface/models/b.py:1)"
    )
