"""The import contract of pyproject.toml (floors, no circles) and where the package finds the project's files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from adamp_repro import paths

from .conftest import PROJECT_ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter (dev extra) not installed")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the package under ``root/src``, with the contracts of ``root/pyproject.toml``."""
    env = os.environ | {"PYTHONPATH": str(root / "src")}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the package and its contracts, to plant imports in."""
    shutil.copy2(PROJECT_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(
        PROJECT_ROOT / "src" / "adamp_repro",
        tmp_path / "src" / "adamp_repro",
        symlinks=True,
        ignore=shutil.ignore_patterns("__pycache__", "configs"),
    )
    return tmp_path


def plant(tree: Path, module: str, source: str) -> None:
    path = tree / "src" / Path(*module.split(".")).with_suffix(".py")
    path.write_text(path.read_text() + "\n\n" + source)


def plant_late_import(tree: Path, module: str, package: str, name: str) -> subprocess.CompletedProcess:
    """Give ``module`` a function that imports ``package.name`` inside its body, then lint the tree: an import
    made only when the function runs is an import all the same."""
    plant(tree, module, f"def _planted():\n    from {package} import {name}\n\n    return {name}\n")
    result = lint_imports(tree)
    assert result.returncode == 1, result.stdout
    return result


def test_the_package_keeps_its_import_contract():
    result = lint_imports(PROJECT_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


def test_the_planted_copy_keeps_the_contract_before_planting(tree):
    assert lint_imports(tree).returncode == 0


def test_an_upward_import_inside_a_function_breaks_the_floors(tree):
    result = plant_late_import(tree, "adamp_repro.optim.sgdp", "adamp_repro.train", "runner")
    assert "adamp_repro.optim is not allowed to import adamp_repro.train" in result.stdout
    assert "adamp_repro.optim.sgdp -> adamp_repro.train.runner" in result.stdout


def test_a_circle_inside_a_package_is_refused(tree):
    # figures imports curves; curves importing figures back (inside a function) closes a circle in results.
    result = plant_late_import(tree, "adamp_repro.results.curves", "adamp_repro.results", "figures")
    assert "No cycles are allowed in adamp_repro.results" in result.stdout


def test_the_results_floors_refuse_a_lower_floor_reaching_up(tree):
    # render is on the lowest floor of results and figures two floors up: no circle, still refused.
    plant(
        tree,
        "adamp_repro.results.render",
        "def _planted():\n    from adamp_repro.results import figures\n\n    return figures\n",
    )
    result = lint_imports(tree)
    assert result.returncode == 1, result.stdout
    assert "adamp_repro.results.render is not allowed to import adamp_repro.results.figures" in result.stdout


def test_a_module_on_no_floor_is_refused(tree):
    (tree / "src" / "adamp_repro" / "stray.py").write_text('"""A module the floors do not name."""\n')
    result = lint_imports(tree)
    assert result.returncode == 1, result.stdout
    assert "adamp_repro.stray" in result.stdout


def test_paths_find_the_checkout_and_its_configs(monkeypatch):
    monkeypatch.delenv(paths.CONFIG_DIR_VAR, raising=False)
    monkeypatch.delenv(paths.ROOT_VAR, raising=False)
    assert paths.project_root() == PROJECT_ROOT
    assert paths.results_dir() == PROJECT_ROOT / "results"
    assert paths.config_dir().resolve() == (PROJECT_ROOT / "configs").resolve()
    assert (paths.config_dir() / "train.yaml").is_file()


def test_paths_follow_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(paths.CONFIG_DIR_VAR, str(tmp_path / "my_configs"))
    monkeypatch.setenv(paths.ROOT_VAR, str(tmp_path))
    assert paths.config_dir() == tmp_path / "my_configs"
    assert paths.project_root() == tmp_path
    assert paths.results_dir() == tmp_path / "results"


def test_the_paper_numbers_come_from_the_root_the_checkout_or_the_package(monkeypatch, tmp_path):
    monkeypatch.delenv(paths.ROOT_VAR, raising=False)
    assert paths.paper_dir() == PROJECT_ROOT / "results" / "paper"
    # A root of one's own without the paper's numbers (only outputs go there): the checkout's.
    monkeypatch.setenv(paths.ROOT_VAR, str(tmp_path))
    assert paths.paper_dir() == PROJECT_ROOT / "results" / "paper"
    (tmp_path / "results" / "paper").mkdir(parents=True)
    assert paths.paper_dir() == tmp_path / "results" / "paper"
    # The package's copy is a link to the same folder in a checkout (a built wheel holds the files).
    assert (paths.PACKAGE_DIR / "paper").resolve() == (PROJECT_ROOT / "results" / "paper").resolve()
    assert (paths.PACKAGE_DIR / "paper" / "P1.csv").is_file()
