"""Packaging: the optimizers need torch alone, the wheel holds the configs, the paper's numbers and the
commands, an installed package trains and builds tables outside a checkout, the pins live in one place."""

from __future__ import annotations

import configparser
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
import yaml

from .conftest import PROJECT_ROOT

# One worker builds this module's fixtures (make test runs pytest-xdist).
pytestmark = pytest.mark.xdist_group("packaging")

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

PINS = PROJECT_ROOT / "requirements" / "pins.txt"
PAPER = PROJECT_ROOT / "results" / "paper"
COMMANDS = {
    "adamp-train": "adamp_repro.cli.entry:train",
    "adamp-reproduce": "adamp_repro.cli.entry:reproduce",
    "adamp-tables": "adamp_repro.cli.entry:tables",
    "adamp-figures": "adamp_repro.cli.entry:figures",
    "adamp-dashboard": "adamp_repro.cli.entry:dashboard",
    "adamp-tune": "adamp_repro.cli.entry:tune",
}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[;\s]", requirement.strip(), maxsplit=1)[0].lower()


def _pyproject() -> dict:
    return tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]


def _pins() -> dict[str, str]:
    lines = [line.strip() for line in PINS.read_text().splitlines()]
    return dict(line.split("==") for line in lines if line and not line.startswith("#"))


def test_the_core_requirement_is_a_torch_range():
    assert _pyproject()["dependencies"] == ["torch>=2.1"]
    assert {_name(r) for r in _pyproject()["optional-dependencies"]["suite"]} >= {
        "torchvision",
        "hydra-core",
        "wandb",
    }
    assert _pins() == {"torch": "2.14.1", "torchvision": "0.29.1"}


def test_environment_yml_mirrors_pyproject_with_the_pins():
    project = _pyproject()
    wanted = [*project["dependencies"], *project["optional-dependencies"]["suite"]]
    wanted += project["optional-dependencies"]["dev"]
    env = yaml.safe_load((PROJECT_ROOT / "environment.yml").read_text())
    pip = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    listed = [r for r in pip if not r.startswith("-e")]
    assert sorted(_name(r) for r in listed) == sorted(_name(r) for r in wanted)
    pinned = {_name(r): r.split("==")[1] for r in listed if "==" in r and _name(r) in _pins()}
    assert pinned == _pins()
    others = {r for r in listed if _name(r) not in _pins()}
    assert others == {r for r in wanted if _name(r) not in _pins()}, "environment.yml: same specifiers"
    assert "-e .[suite,dev]" in pip


def test_the_optimizers_step_with_torch_alone():
    # Every package of the suite is made absent (None in sys.modules: imports fail as for a missing package).
    script = textwrap.dedent(
        """
        import sys
        for name in ("hydra", "omegaconf", "wandb", "wandb_workspaces", "pandas", "timm", "torchvision",
                     "pydantic", "matplotlib", "scipy", "yaml", "numpy", "PIL", "tqdm", "pyautoattack"):
            sys.modules[name] = None
        import warnings
        warnings.simplefilter("ignore")  # torch warns once that NumPy is missing
        import torch
        from adamp_repro.optim import SGDP, AdamP

        w = torch.nn.Parameter(torch.randn(4, 3))
        for cls, kwargs in ((SGDP, {"lr": 0.1, "momentum": 0.9}), (AdamP, {"lr": 1e-3})):
            opt = cls([w], **kwargs)
            w.grad = torch.randn(4, 3)
            before = w.detach().clone()
            opt.step()
            assert not torch.equal(before, w.detach()), cls.__name__
        print("stepped")
        """
    )
    env = os.environ | {"PYTHONPATH": str(PROJECT_ROOT / "src")}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, cwd=PROJECT_ROOT
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "stepped"


def test_a_command_without_the_suite_says_what_to_install():
    # The optimizers install with torch alone; a command then names the missing package in one line, exit 2.
    script = textwrap.dedent(
        """
        import sys
        sys.modules["hydra"] = None
        sys.argv = ["adamp-train", "scale=smoke"]
        from adamp_repro.cli import entry
        entry.train()
        """
    )
    env = os.environ | {"PYTHONPATH": str(PROJECT_ROOT / "src")}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip() == (
        "error: adamp-train needs the suite's packages, and 'hydra' is not installed; "
        "install them with pip install 'adamp-repro[suite]'"
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of a copy of the project's sources (so the build leaves nothing in the checkout)."""
    pytest.importorskip("setuptools")
    root = tmp_path_factory.mktemp("project")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(PROJECT_ROOT / name, root / name)
    shutil.copytree(PROJECT_ROOT / "configs", root / "configs")
    shutil.copytree(PAPER, root / "results" / "paper")
    shutil.copytree(
        PROJECT_ROOT / "src",
        root / "src",
        symlinks=True,
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
    )
    out = root / "dist"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        ".",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(out),
    ]
    result = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (found,) = out.glob("adamp_repro-*.whl")
    return found


def test_the_wheel_holds_the_configs_and_requires_torch_alone(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    configs = {
        f"adamp_repro/configs/{p.relative_to(PROJECT_ROOT / 'configs').as_posix()}"
        for p in (PROJECT_ROOT / "configs").rglob("*.yaml")
    }
    assert "adamp_repro/configs/train.yaml" in configs and configs <= names
    assert "adamp_repro/optim/sgdp.py" in names and "adamp_repro/data/assets/cifar10_mini.npz" in names
    assert "adamp_repro/data/assets/tinyshakespeare.txt" in names  # the embedded text of the language task
    core = [
        line for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    assert core == ["Requires-Dist: torch>=2.1"]


def test_the_wheel_holds_the_paper_numbers_and_the_commands(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(
            archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt")
        )
    paper = {f"adamp_repro/paper/{p.name}" for p in PAPER.iterdir() if p.suffix in (".csv", ".md")}
    assert {"adamp_repro/paper/P1.csv", "adamp_repro/paper/README.md"} <= paper <= names
    assert "adamp_repro/cli/train.py" in names
    parser = configparser.ConfigParser()
    parser.read_string(entry_points)
    assert dict(parser["console_scripts"]) == COMMANDS == _pyproject()["scripts"]


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel installed into a folder of its own (no dependencies: they come from this interpreter)."""
    site = tmp_path_factory.mktemp("installed") / "site"
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site)]
    result = subprocess.run([*cmd, str(wheel)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return site


def _outside(site: Path, cwd: Path, *cmd: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """``cmd`` in ``cwd``, away from the checkout: the installed package alone, no ``ADAMP_REPRO_*``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAMP_REPRO_")}
    env |= {"PYTHONPATH": str(site), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_an_installed_package_finds_its_configs(installed, tmp_path):
    script = "from adamp_repro import paths; print(paths.config_dir()); print(paths.project_root())"
    result = _outside(installed, tmp_path, sys.executable, "-c", script)
    assert result.returncode == 0, result.stderr
    config_dir, root = (Path(line) for line in result.stdout.splitlines())
    assert config_dir == installed / "adamp_repro" / "configs" and (config_dir / "experiment").is_dir()
    assert (config_dir / "train.yaml").is_file() and not config_dir.is_symlink()
    assert root == tmp_path  # not imported from a checkout: the working directory


def test_an_installed_package_reads_the_paper_trains_and_builds_tables(installed, tmp_path):
    from adamp_repro.results.analysis import load_paper_readings
    from adamp_repro.results.reference import load_paper_numbers

    expected = f"{len(load_paper_numbers(PAPER))} {len(load_paper_readings(PAPER / 'analysis_resnet18.csv'))}"
    script = textwrap.dedent(
        """
        from adamp_repro import paths
        from adamp_repro.results import analysis, reference

        print(paths.paper_dir())
        print(paths.results_dir())
        print(analysis.PAPER_FILE)
        print(len(reference.load_paper_numbers()), len(analysis.load_paper_readings()))
        """
    )
    result = _outside(installed, tmp_path, sys.executable, "-c", script)
    assert result.returncode == 0, result.stderr[-3000:]
    paper_dir, results, paper_file, counts = result.stdout.splitlines()
    package = installed / "adamp_repro"
    assert Path(paper_dir) == package / "paper" and not Path(paper_dir).is_symlink()
    assert Path(results) == tmp_path / "results"  # outputs go under the working directory
    assert Path(paper_file) == package / "paper" / "analysis_resnet18.csv"
    assert counts == expected  # the package's copy holds the checkout's numbers

    runs = tmp_path / "results" / "runs"
    train = [sys.executable, "-m", "adamp_repro.cli.train", "scale=smoke", "dataset=cifar10_mini"]
    train += [
        "logger=none",
        "scale.epochs=1",
        "scale.max_steps_per_epoch=2",
        "device=cpu",
        "progress=false",
        "threads=1",
    ]
    result = _outside(installed, tmp_path, *train, f"output_root={runs}", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (summary,) = runs.rglob("summary.json")
    record = json.loads(summary.read_text())
    assert record["status"] == "completed" and record["scale"] == "smoke"

    # The tables from the installed package: the run records and outputs of ./results, the package's paper.
    result = _outside(installed, tmp_path, sys.executable, "-m", "adamp_repro.cli.tables", "--no-wandb")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 completed runs" in result.stdout
    assert (tmp_path / "results" / "tables" / "README.md").is_file()
    assert (tmp_path / "results" / "CLAIMS.md").is_file()
    refused = _outside(installed, tmp_path, *train, "optimizer.lr=-1")
    assert refused.returncode == 2 and refused.stderr.startswith("error: "), refused.stderr[-2000:]


def test_the_installed_console_script_plans_its_runs_through_the_package(installed, tmp_path):
    command = str(installed / "bin" / "adamp-reproduce")
    result = _outside(installed, tmp_path, command, "--scale", "smoke", "--dry-run")
    assert result.returncode == 0, result.stderr[-3000:]
    planned = [line for line in result.stdout.splitlines() if "python -m adamp_repro.cli.train -m " in line]
    assert planned and all(f"output_root={tmp_path / 'results' / 'local' / 'runs'}" in p for p in planned)
    assert not (tmp_path / "results").exists()  # a dry run writes nothing


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_answers_help(command, monkeypatch, capsys):
    from hydra.core.global_hydra import GlobalHydra

    module, function = COMMANDS[command].split(":")
    entry = getattr(importlib.import_module(module), function)
    monkeypatch.setattr(
        sys, "argv", [command, "--help"]
    )  # a console script calls its entry with no arguments
    try:
        with pytest.raises(SystemExit) as exit_info:
            entry()
    finally:
        GlobalHydra.instance().clear()
    assert exit_info.value.code in (0, None)
    assert capsys.readouterr().out.strip()


def test_the_venv_is_rebuilt_when_the_pins_change(tmp_path):
    # A copy of the Makefile and the two files its stamp depends on; `make -n` says whether it would reinstall.
    for name in ("Makefile", "pyproject.toml", "requirements/pins.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT_ROOT / name, tmp_path / name)
    stamp = tmp_path / ".venv" / ".installed-stamp"
    stamp.parent.mkdir()
    stamp.touch()
    now = time.time()
    for name, mtime in (
        ("pyproject.toml", now - 100),
        ("requirements/pins.txt", now - 100),
        (stamp, now - 50),
    ):
        os.utime(tmp_path / name, (mtime, mtime))

    def would_install() -> str:
        result = subprocess.run(
            ["make", "-n", "venv"], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert "pip install" not in would_install()
    os.utime(tmp_path / "requirements/pins.txt", (now, now))
    assert "-c requirements/pins.txt -e '.[suite,dev]'" in would_install()
