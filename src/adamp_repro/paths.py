"""Where the project's files are: the configs, the project root and its results.

- ``config_dir()``: the Hydra configs (``train.yaml`` and its groups, ``tables.yaml``). ``$ADAMP_REPRO_CONFIG_DIR``
  when set, else the ``configs`` folder inside the package: in a checkout ``src/adamp_repro/configs`` is a link
  to the top-level ``configs/``, and a built wheel holds a copy, so an installed package finds its configs too.
- ``project_root()``: ``$ADAMP_REPRO_ROOT`` when set, else the checkout the package is imported from (the folder
  two levels above the package that holds ``pyproject.toml``), else the working directory.
- ``results_dir()``: ``project_root() / "results"``: the committed run records (``runs/``), the paper's numbers
  (``paper/``), the built tables and figures.

Each is read at call time, so a setting made after import counts.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CONFIG_DIR_VAR = "ADAMP_REPRO_CONFIG_DIR"
ROOT_VAR = "ADAMP_REPRO_ROOT"


def config_dir() -> Path:
    """The configs folder: ``$ADAMP_REPRO_CONFIG_DIR``, else the one shipped with the package."""
    chosen = os.environ.get(CONFIG_DIR_VAR)
    return Path(chosen).expanduser().resolve() if chosen else PACKAGE_DIR / "configs"


def project_root() -> Path:
    """``$ADAMP_REPRO_ROOT``, else the source checkout holding the package, else the working directory."""
    chosen = os.environ.get(ROOT_VAR)
    if chosen:
        return Path(chosen).expanduser().resolve()
    checkout = PACKAGE_DIR.parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / "src" / PACKAGE_DIR.name).is_dir():
        return checkout
    return Path.cwd()


def results_dir() -> Path:
    return project_root() / "results"
