"""Boundaries of the package layout, checked on the source (AST), so a violation fails here.

- ``ernie_cpt/model/`` imports no DeepSpeed, W&B or ``torch.distributed`` (it knows no ranks);
- ``pretrain_tasks/`` imports nothing from ``ernie_cpt`` (tasks are plug-ins of the trainer);
- ``ernie_cpt/data/`` imports nothing from ``ernie_cpt.training`` or ``ernie_cpt.experiments``;
- no product function is longer than 60 lines (the CLI's argument table excepted).

(``schedules/`` importing no torch is checked at run time in ``test_schedules.py``.)
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PRODUCT = ("ernie_cpt", "pretrain_tasks", "schedules")
MAX_FUNCTION_LINES = 60
LONG_FUNCTION_EXCEPTIONS = {("ernie_cpt/cli.py", "build_parser")}


def imported_modules(path: Path) -> set[str]:
    """Absolute module names a file imports (``import a.b`` and ``from a.b import c`` -> a.b,
    a.b.c); relative imports are resolved against the file's package."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def violations(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    """``file: module`` for every import under ``folder`` of a module in (or under) ``forbidden``."""
    bad = []
    for path in sorted((REPO / folder).rglob("*.py")):
        for module in sorted(imported_modules(path)):
            if any(module == f or module.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(REPO)}: {module}")
    return bad


def long_functions(roots: tuple[str, ...] = PRODUCT) -> list[str]:
    """``file:line name (N lines)`` for every function over the limit, exceptions aside."""
    found = []
    for root in roots:
        for path in sorted((REPO / root).rglob("*.py")):
            relative = str(path.relative_to(REPO))
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES and (
                    (relative, node.name) not in LONG_FUNCTION_EXCEPTIONS
                ):
                    found.append(f"{relative}:{node.lineno} {node.name} ({length} lines)")
    return found


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("ernie_cpt/model", ("deepspeed", "wandb", "torch.distributed")),
        ("pretrain_tasks", ("ernie_cpt",)),
        ("ernie_cpt/data", ("ernie_cpt.training", "ernie_cpt.experiments")),
    ],
)
def test_layer_imports_nothing_it_must_not(folder, forbidden):
    assert (REPO / folder).is_dir()
    assert violations(folder, forbidden) == []


def test_no_product_function_is_longer_than_60_lines():
    assert long_functions() == []


def test_the_checks_see_violations(tmp_path, monkeypatch):
    # The guards above pass only if they can see a violation: plant one of each kind.
    package = tmp_path / "pkg" / "model"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "bad.py").write_text(
        "import deepspeed\nfrom torch.distributed import all_reduce\nfrom .. import wandb\n"
        "def long():\n" + "    x = 1\n" * 60
    )
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    # a relative import of a sibling named like a forbidden package is not that package
    assert violations("pkg/model", ("deepspeed", "wandb", "torch.distributed")) == [
        "pkg/model/bad.py: deepspeed",
        "pkg/model/bad.py: torch.distributed",
        "pkg/model/bad.py: torch.distributed.all_reduce",
    ]
    assert long_functions(("pkg",)) == ["pkg/model/bad.py:4 long (61 lines)"]
