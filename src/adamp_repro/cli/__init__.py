"""The command lines, each a module whose ``main`` is a console entry point (``[project.scripts]`` of
pyproject.toml) and runs with ``python -m`` too; ``scripts/*.py`` in a checkout call the same ``main``.

=================== ================================ =========================
command             module                           checkout script
=================== ================================ =========================
``adamp-train``     ``adamp_repro.cli.train``        ``scripts/train.py``
``adamp-reproduce`` ``adamp_repro.cli.reproduce``    ``scripts/reproduce_table.py``
``adamp-tables``    ``adamp_repro.cli.tables``       ``scripts/build_tables.py``
``adamp-figures``   ``adamp_repro.cli.figures``      ``scripts/make_figures.py``
``adamp-dashboard`` ``adamp_repro.cli.dashboard``    ``scripts/wandb_dashboard.py``
=================== ================================ =========================

Their default folders are under ``adamp_repro.paths.results_dir()``: the checkout's ``results/`` when the
package is imported from a checkout, else ``results/`` of ``$ADAMP_REPRO_ROOT`` or of the working directory.

The console scripts enter through this module's functions (``train``, ``reproduce``, ...), which import their
command's module only when run: a package installed without the ``suite`` extra (the optimizers alone need only
torch) answers a command with one line naming the missing package and the install that brings it, exit 2,
rather than a traceback.
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
