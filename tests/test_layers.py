"""The layers only look down: each package imports only the project packages below it, and no module is over 400
lines. Read from the source with ast, so an import inside a function counts as much as one at the top."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

PROJECT = {"barrierlab", "rewards", "pretrain", "posttrain", "eval", "experiments", "tests"}
ALLOWED = {  # package → the project packages it may import
    "barrierlab": {"barrierlab"},
    "rewards": {"barrierlab", "rewards"},
    "pretrain": {"barrierlab", "rewards", "pretrain"},
    "posttrain": {"barrierlab", "rewards", "posttrain"},
    "eval": {"barrierlab", "rewards", "eval"},
    "experiments": PROJECT - {"tests"},
}
MAX_LINES = 400


def project_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import of a project package in ``path``, wherever it stands in the file
    (a relative import stays inside its own package)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(node.lineno, name) for name in names if name.split(".")[0] in PROJECT]
    return found


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_project_imports_reads_every_kind_of_import(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("import os, eval.report\nfrom posttrain.evaluation import ExactEval\nfrom . import sibling\n"
                    "def f():\n    import pretrain.config as pc\n    from experiments import sweep\n")
    assert project_imports(path) == [(1, "eval.report"), (2, "posttrain.evaluation"), (5, "pretrain.config"),
                                     (6, "experiments")]


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_imports_only_the_layers_below_it(package):
    assert modules(package), f"no modules found in {package}/"
    upward = [f"{path.relative_to(ROOT)}:{line} imports {name}" for path in modules(package)
              for line, name in project_imports(path) if name.split(".")[0] not in ALLOWED[package]]
    assert not upward, f"{package} may import only {sorted(ALLOWED[package])}:\n" + "\n".join(upward)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_module_is_over_400_lines(package):
    long = [f"{path.relative_to(ROOT)}: {n} lines" for path in modules(package)
            if (n := len(path.read_text().splitlines())) > MAX_LINES]
    assert not long, f"modules over {MAX_LINES} lines:\n" + "\n".join(long)
