"""Rebuild results/figures from the run records and the toy experiments: ``adamp_repro.cli.figures``
(``adamp-figures``).

python scripts/make_figures.py --runs results/runs --out results/figures [--no-toys]
"""

from __future__ import annotations

from adamp_repro.cli.figures import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
