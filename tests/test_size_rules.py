"""The project's size rules, read with `ast` from the source: no module of the package above 450
lines, no function above 80 lines (from its `def`, decorators aside, to its last line, docstring
included), cli.py at most 300 lines, and no more than 12 modules or packages side by side at the
top of bench/. A failure names every offender."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "reports", "protocols")
MAX_MODULE, MAX_FUNCTION, MAX_CLI, MAX_TOP = 450, 80, 300, 12


def sources() -> list[Path]:
    files = [f for pkg in PACKAGES for f in sorted((ROOT / pkg).rglob("*.py")) if "__pycache__" not in f.parts]
    return files + [ROOT / "cli.py"]


def line_count(path: Path) -> int:
    return len(path.read_text().splitlines())


def long_functions(path: Path, limit: int = MAX_FUNCTION) -> list[str]:
    """`file:line name (n lines)` for each function or method longer than `limit` lines."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            if n > limit:
                out.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    return out


def test_the_rules_see_the_whole_package():
    files = {f.relative_to(ROOT).as_posix() for f in sources()}
    assert {"cli.py", "bench/core/config.py", "reports/compare.py", "protocols/base.py"} <= files
    assert long_functions(ROOT / "cli.py", limit=5)  # not vacuous: a short limit finds functions


def test_no_module_above_450_lines():
    big = [f"{f.relative_to(ROOT)} ({n} lines)" for f in sources() if (n := line_count(f)) > MAX_MODULE]
    assert not big, f"modules above {MAX_MODULE} lines: " + "; ".join(big)


def test_no_function_above_80_lines():
    long = [entry for f in sources() for entry in long_functions(f)]
    assert not long, f"functions above {MAX_FUNCTION} lines: " + "; ".join(long)


def test_cli_py_at_most_300_lines():
    n = line_count(ROOT / "cli.py")
    assert n <= MAX_CLI, f"cli.py has {n} lines, more than {MAX_CLI}: move a command's logic to bench/commands/"


def test_at_most_12_entries_at_the_top_of_bench():
    top = sorted(
        p.name
        for p in (ROOT / "bench").iterdir()
        if p.name != "__pycache__"
        and ((p.is_file() and p.suffix == ".py") or (p.is_dir() and not p.name.startswith(".")))
    )
    assert len(top) <= MAX_TOP, (
        f"{len(top)} modules or packages at the top of bench/, more than {MAX_TOP}: " + ", ".join(top)
    )
