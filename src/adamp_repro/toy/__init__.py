"""The paper's toy and analysis experiments: norm growth under GD / momentum / projection with its closed
forms, the project page's 2D cosine toy and its 3D Rosenbrock-on-hemisphere toy."""

from adamp_repro.toy.circle2d import (
    PAPER_FINAL,
    TOY_LR,
    TOY_OFFSET,
    Algorithm1SGD,
    CircleRun,
    circle_toy_runs,
    final_norm_rows,
    learning_rate_scan,
    run_circle_toy,
)
from adamp_repro.toy.hemisphere3d import HemisphereRun, hemisphere_rows, run_hemisphere_toy
from adamp_repro.toy.norm_growth import (
    SphereQuadratic,
    Trajectory,
    gd_norm_sq,
    momentum_norm_sq,
    momentum_radial_products,
    projected_norm_sq,
    simulate,
)

__all__ = [
    "PAPER_FINAL",
    "TOY_LR",
    "TOY_OFFSET",
    "Algorithm1SGD",
    "CircleRun",
    "HemisphereRun",
    "SphereQuadratic",
    "Trajectory",
    "circle_toy_runs",
    "final_norm_rows",
    "gd_norm_sq",
    "hemisphere_rows",
    "learning_rate_scan",
    "momentum_norm_sq",
    "momentum_radial_products",
    "projected_norm_sq",
    "run_circle_toy",
    "run_hemisphere_toy",
    "simulate",
]
