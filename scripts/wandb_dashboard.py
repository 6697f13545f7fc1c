"""W&B dashboards as code: ``adamp_repro.cli.dashboard`` (``adamp-dashboard``).

python scripts/wandb_dashboard.py                          # offline: results/dashboards/*.json, no key needed
WANDB_API_KEY=... python scripts/wandb_dashboard.py --publish [--entity ENTITY]   # save to W&B, print URLs
"""

from __future__ import annotations

import sys

from adamp_repro.cli.dashboard import default_project, main

__all__ = ["default_project", "main"]

if __name__ == "__main__":
    sys.exit(main())
