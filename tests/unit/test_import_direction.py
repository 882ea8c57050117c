"""The packages import one way: launcher -> slurm, trainer_core; trainer_core imports none of them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FORBIDDEN = {
    "trainer_core": {"launcher", "slurm", "hydra", "omegaconf", "submitit"},
    "slurm": {"launcher"},
}


def imported_top_level_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_import_upstream_packages(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no Python files found under {package}/"
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_top_level_names(path) & FORBIDDEN[package])
        for path in files
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_checker_sees_forbidden_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\nfrom hydra import compose\nimport launcher.cli as cli\nfrom . import x\n")
    assert imported_top_level_names(module) == {"os", "hydra", "launcher"}
