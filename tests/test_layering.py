"""The dependency direction of the four packages, read from their import statements:
cluster -> pipelines -> tasks -> model, never back; model/ and tasks/ import no ray, deepspeed or
mlflow (tests/model/test_model_imports.py also imports model/ with those blocked)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package -> top-level modules it must not import
FORBIDDEN = {
    "model": {"tasks", "pipelines", "cluster", "ray", "deepspeed", "mlflow"},
    "tasks": {"pipelines", "cluster", "ray", "deepspeed", "mlflow"},
    "pipelines": {"cluster"},
}


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module `path` imports (absolute imports, at any depth of the file)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_against_the_direction(package):
    bad = {str(p.relative_to(ROOT)): sorted(imported_modules(p) & FORBIDDEN[package])
           for p in sorted((ROOT / package).rglob("*.py"))}
    assert not {k: v for k, v in bad.items() if v}


def test_the_check_sees_imports_inside_functions(tmp_path):
    # the guard itself must work: a lazy import inside a function counts
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from cluster.jobs import submit_run\n    import ray.data\n")
    assert imported_modules(f) == {"cluster", "ray"}
