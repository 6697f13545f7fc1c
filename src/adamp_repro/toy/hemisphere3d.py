"""The 3D toy of the AdamP project page: Rosenbrock on a hemisphere, with a redundant radial axis.

The page (``sgd_3d_toy.svg``, ``sgd_wd_3d_toy.svg``, ``sgdp_3d_toy.svg``; docs/paper.md §4.2)
shows momentum GD, momentum GD + weight decay and GD + projection on Rosenbrock contours in coordinates
(psi, phi), from (-2, 2) towards the optimum (1, 1), with ||w|| = r plotted over iterations 0-200. Its text:
"3D Rosenbrock function, defined on hemisphere, by adding a redundant radial axis r".

Our construction (the page shows neither the chart nor any hyper-parameter): w = (w_x, w_y, w_z) with w_z > 0,
(psi, phi) = (w_x / w_z, w_y / w_z) (the central projection of the upper hemisphere onto the plane z = 1, so
f(w) = Rosenbrock(psi, phi) is scale-invariant), and w_0 = (-2, 2, 1) / 3, which has norm 1 and sits at
(psi, phi) = (-2, 2). Settings chosen by us to resemble the page's r-curves, not fitted to them: lr 3e-5,
momentum 0.9, 200 iterations, and for the weight-decay panel L2 decay 20 in ``torch.optim.SGD``.
What we get: momentum GD r 1 -> 2.81 and flat, GD + WD peaks at 2.4 (iteration 28) and ends at 0.89,
projection stays at 1.11 (the page: about 3.1; 2.5 at iteration 45 then 0.8; 1.0-1.1). Unlike the page,
none of the three reaches (1, 1) within 200 iterations at this lr (Rosenbrock's valley is slow); projection
gets closest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from adamp_repro.toy.circle2d import Algorithm1SGD

ROSENBROCK_B = 100.0  # the standard (1 - x)^2 + 100 (y - x^2)^2
HEMISPHERE_LR = 3e-5
HEMISPHERE_MOMENTUM = 0.9
HEMISPHERE_WD = 20.0
HEMISPHERE_STEPS = 200
HEMISPHERE_METHODS = ("gd_momentum", "gd_momentum_wd", "gd_momentum_projection")
HEMISPHERE_LABELS = {
    "gd_momentum": "GD (momentum)",
    "gd_momentum_wd": "GD + weight decay",
    "gd_momentum_projection": "GD + projection (ours)",
}
START = (-2.0, 2.0, 1.0)  # (psi, phi) = (-2, 2), ||w_0|| = 3 before scaling to 1
OPTIMUM = (1.0, 1.0)


def rosenbrock(x, y, b: float = ROSENBROCK_B):
    """(1 - x)^2 + b (y - x^2)^2 for arrays or tensors; minimum 0 at (1, 1)."""
    return (1 - x) ** 2 + b * (y - x**2) ** 2


@dataclass(frozen=True)
class HemisphereRun:
    """``weights`` (T+1, 3) for iterations 0..T; ``chart`` (T+1, 2) their (psi, phi); ``norms`` (T+1,) r."""

    method: str
    weights: np.ndarray

    @property
    def chart(self) -> np.ndarray:
        return self.weights[:, :2] / self.weights[:, 2:3]

    @property
    def norms(self) -> np.ndarray:
        return np.linalg.norm(self.weights, axis=1)

    @property
    def losses(self) -> np.ndarray:
        return rosenbrock(self.chart[:, 0], self.chart[:, 1])


def run_hemisphere_toy(
    method: str,
    lr: float = HEMISPHERE_LR,
    momentum: float = HEMISPHERE_MOMENTUM,
    weight_decay: float = HEMISPHERE_WD,
    steps: int = HEMISPHERE_STEPS,
) -> HemisphereRun:
    """One panel of the page's figure, in float64; ``weight_decay`` is used by ``gd_momentum_wd`` only."""
    w = torch.tensor(START, dtype=torch.float64) / 3.0
    w.requires_grad_(True)
    if method == "gd_momentum":
        optimizer: torch.optim.Optimizer = torch.optim.SGD([w], lr=lr, momentum=momentum)
    elif method == "gd_momentum_wd":
        optimizer = torch.optim.SGD([w], lr=lr, momentum=momentum, weight_decay=weight_decay)
    elif method == "gd_momentum_projection":
        optimizer = Algorithm1SGD([w], lr=lr, momentum=momentum)
    else:
        raise ValueError(f"Unknown hemisphere toy method: {method!r}; expected one of {HEMISPHERE_METHODS}")
    weights = [w.detach().clone()]
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        rosenbrock(w[0] / w[2], w[1] / w[2]).backward()
        optimizer.step()
        weights.append(w.detach().clone())
    return HemisphereRun(method, torch.stack(weights).numpy())


def hemisphere_rows(runs: list[HemisphereRun]) -> list[dict[str, float | str]]:
    """Peak and final r, the iteration of the peak, and the final (psi, phi) and loss of each run."""
    rows = []
    for run in runs:
        psi, phi = run.chart[-1]
        rows.append(
            {
                "method": run.method,
                "steps": len(run.weights) - 1,
                "peak_norm": float(run.norms.max()),
                "peak_iteration": int(run.norms.argmax()),
                "final_norm": float(run.norms[-1]),
                "final_psi": float(psi),
                "final_phi": float(phi),
                "final_loss": float(run.losses[-1]),
            }
        )
    return rows
