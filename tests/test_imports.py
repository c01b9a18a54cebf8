"""No import cycles: the module-level imports between the project's modules form no loop, and the
modules that once did (`bench.data.datasets` <-> `bench.data.folder_datasets`, `protocols` <-> its protocol
modules) import first in a fresh interpreter."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bench", "protocols", "reports")


def modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = f.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if f.stem == "__init__" else parts)] = f
    return found


def top_level_imports(tree: ast.Module):
    """Import statements run at import time: module level, also inside if/try/with (not in functions)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                stack += getattr(node, field, [])
        elif isinstance(node, ast.ExceptHandler):
            stack += node.body


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph = {}
    for name, path in mods.items():
        package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
        deps = set()
        for node in top_level_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
                continue
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1]
                    + ([node.module] if node.module else [])
                )
            deps.add(base)
            deps |= {f"{base}.{a.name}" for a in node.names}
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, path = {}, []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                return path[path.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_imports():
    graph = import_graph()
    assert (
        "bench.data.manifest" in graph["bench.data.folder_datasets"]
        and "bench.data.groups" in graph["bench.data.datasets"]
    )
    assert "protocols.base" in graph["protocols.holdout"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_leaf_modules_import_nothing_of_the_package_above_them():
    graph = import_graph()
    assert graph["bench.data.manifest"] <= {"bench.core.config", "bench.core.errors"}
    assert graph["protocols.base"] == {"bench.core.errors"}  # the one error base class, a leaf
    assert graph["bench.core.errors"] == set()


@pytest.mark.parametrize("first", ["bench.data.folder_datasets", "bench.data.groups", "protocols.holdout"])
def test_imports_first_in_a_fresh_interpreter(first):
    code = f"import {first}; import bench.data.datasets, protocols; print(sorted(bench.data.datasets.DATASETS))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["['demo',", "'folder',", "'gtzan',", "'us8k']"]


def test_one_error_base_class_and_a_leaf_errors_module():
    """Every error meant for people derives from bench.core.errors.FoldbenchError (the CLI's one line and
    exit status); bench/core/errors.py imports nothing of foldbench."""
    import ast
    import importlib
    from pathlib import Path

    from bench.core.errors import FoldbenchError

    src = Path(__file__).resolve().parents[1] / "bench" / "core" / "errors.py"
    imports = [n for n in ast.walk(ast.parse(src.read_text())) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert imports == []
    for module, name in [
        ("bench.data.audio", "BadAudio"),
        ("bench.data.cache", "CacheError"),
        ("bench.core.config", "ConfigError"),
        ("bench.data.manifest", "DatasetError"),
        ("bench.features.frontends", "FeatureError"),
        ("protocols.base", "ProtocolError"),
        ("bench.core.runfolder", "RunFolderError"),
        ("bench.train.fit", "TrainingError"),
        ("bench.tracking.tracker", "TrackingError"),
        ("reports.compare", "CompareError"),
        ("bench.scale.ray_engine", "EngineError"),
        ("bench.models.registry", "ModelError"),
    ]:
        cls = getattr(importlib.import_module(module), name)
        assert issubclass(cls, FoldbenchError) and cls.exit_status == 2, name
