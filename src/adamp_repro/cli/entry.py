"""The console scripts' entry functions (``[project.scripts]`` of pyproject.toml): each imports its command's
module (``adamp_repro.cli.<name>``) when it runs and calls its ``main``. A suite package that is not installed
(the optimizers alone need only torch) ends the command with one line naming it and the install that brings it,
exit status 2, rather than a traceback.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

# The command modules, by console-script function.
COMMANDS = {
    "train": "adamp_repro.cli.train",
    "reproduce": "adamp_repro.cli.reproduce",
    "tables": "adamp_repro.cli.tables",
    "figures": "adamp_repro.cli.figures",
    "dashboard": "adamp_repro.cli.dashboard",
    "tune": "adamp_repro.cli.tune",
}
SUITE_EXTRA = "pip install 'adamp-repro[suite]'"


def run_command(name: str) -> Any:
    """Import the command ``name``'s module and run its ``main``; a suite package that is not installed ends it
    with one line and exit status 2."""
    try:
        module = importlib.import_module(COMMANDS[name])
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] == "adamp_repro":
            raise
        print(
            f"error: adamp-{name} needs the suite's packages, and {exc.name!r} is not installed; "
            f"install them with {SUITE_EXTRA}",
            file=sys.stderr,
        )
        sys.exit(2)
    return module.main()


def train() -> Any:
    return run_command("train")


def reproduce() -> Any:
    return run_command("reproduce")


def tables() -> Any:
    return run_command("tables")


def figures() -> Any:
    return run_command("figures")


def dashboard() -> Any:
    return run_command("dashboard")


def tune() -> Any:
    return run_command("tune")
