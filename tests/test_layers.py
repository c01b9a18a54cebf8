"""The layers contract (pyproject.toml's [tool.importlinter], docs/architecture.md): a lower layer never
imports a higher one. It holds on the tree, and it is not vacuous: one upward import breaks it."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"


def lint(tree: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT), "--no-cache"],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tree)},
    )


def copy_tree(dest: Path) -> Path:
    for name in ("bench", "protocols", "reports"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def test_the_layers_contract_holds(tmp_path):
    result = lint(copy_tree(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "Contracts: 1 kept, 0 broken." in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    tree = copy_tree(tmp_path)
    atomic = tree / "bench" / "core" / "atomic.py"
    atomic.write_text(atomic.read_text() + "\n\ndef _upward():\n    from bench.drivers import kfold  # noqa\n")
    result = lint(tree)
    assert result.returncode != 0
    assert "bench.core is not allowed to import bench.drivers" in result.stdout
    assert "bench.core.atomic -> bench.drivers.kfold" in result.stdout
