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

The console scripts enter through ``adamp_repro.cli.entry``, which imports a command's module only when it runs:
a package installed without the ``suite`` extra (the optimizers alone need only torch) answers a command with
one line naming the missing package and the install that brings it, exit 2, rather than a traceback.
"""
