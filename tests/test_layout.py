"""The layout the README describes: library below entry points, no import circles, nothing imports tests/."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY_PACKAGES = ("models", "meshes", "metrics", "tasks", "shape_index", "webapp")
LIBRARY_MODULES = ("checkpoints", "composed_dataset", "features", "multiview_dataset", "utils")


def project_files():
    skip = {".venv", "data", "logs", "weights", ".git"}
    return [p for p in ROOT.rglob("*.py") if not skip & set(p.relative_to(ROOT).parts)]


def module_name(path):
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def is_library(module):
    return module.split(".")[0] in LIBRARY_PACKAGES or module in LIBRARY_MODULES


def import_graph():
    """{module: {project modules it imports}} for every .py file of the project (function-level imports too)."""
    files = {module_name(p): p for p in project_files()}
    graph = {}
    for mod, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            deps |= {n for n in names if n in files and n != mod}
        graph[mod] = deps
    return graph


def test_library_never_imports_an_entry_point():
    graph = import_graph()
    wrong = [(m, d) for m, deps in graph.items() if is_library(m) for d in deps if not is_library(d)]
    assert not wrong, f"library modules importing entry points or tests: {wrong}"


def test_nothing_outside_tests_imports_tests():
    graph = import_graph()
    wrong = [(m, d) for m, deps in graph.items() if not m.startswith("tests") for d in deps if d.startswith("tests")]
    assert not wrong


def test_no_import_circles():
    graph, state, circles = import_graph(), {}, []

    def visit(node, path):
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                circles.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = "done"
    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not circles, " ; ".join(" -> ".join(c) for c in circles)


def test_the_checker_sees_what_it_checks():
    graph = import_graph()
    assert "tasks.text2shape" in graph["train"] and "models.clip_wrapper" in graph["tasks.clip_task"]
    assert is_library("metrics.retrieval") and not is_library("eval_recall") and not is_library("scripts.demo")
