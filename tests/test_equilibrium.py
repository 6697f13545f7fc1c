"""The rotational equilibrium predictions of ``adamp_repro.optim.equilibrium`` against the real optimizers.

No network: a weight of shape (ROWS, DIM) whose every row is one scale-invariant filter gets, at each step, the
gradient G * r / ||row||, r a seeded random unit vector orthogonal to that row (the random-walk model of
docs/equilibrium.md). The real classes (torch.optim.SGD, torch.optim.AdamW, adamp_repro.optim.SGDP and AdamP,
default ``foreach=None``: the fused C++ kernels for these fp32 CPU weights) step it from a norm 10% away from the
predicted one (START); after BURN_IN relaxation times (predicted by ``relaxation_time``) the RMS angle per step per row
and the RMS row norm are measured over WINDOW steps, the angle in float64 as 2 atan2(|a - b|, |a + b|) of the
unit rows.

Tolerances. ANGLE_TOL 2%: the statistical error of the RMS angle over ROWS x WINDOW samples is about 0.3%, the
model's neglected terms at these settings (order lr*wd and the rotation within one momentum time) below 0.5%
(measured); 2% still tells apart every prediction from its neighbours (heavy ball vs Nesterov differ by 16%,
AdamP's wd_ratio by a factor 3). NORM_TOL 3%: the norm also carries the second-moment noise of Adam
(E[g^2 / v] ~ 1 - 2(1 - beta2), -0.5% in the norm at beta2 0.99). A residual of the start, 10% e^-BURN_IN =
0.5%. Predictions that fail are kept as strict xfails with the measured gap.
"""

from __future__ import annotations

import math

import pytest
import torch

from adamp_repro.optim import SGDP, AdamP
from adamp_repro.optim.equilibrium import (
    NoEquilibriumPrediction,
    angular_update,
    decay_fraction,
    equilibrium_norm,
    matched_adamw_weight_decay,
    relaxation_time,
)

pytestmark = pytest.mark.usefixtures("one_thread")

ROWS, DIM, G = 32, 128, 1.0
START = 1.1  # initial row norm / predicted norm
BURN_IN = 3.0  # relaxation times before measuring
WINDOW = 200  # steps measured
ANGLE_TOL, NORM_TOL = 0.02, 0.03


def _build(name: str, hp: dict, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    if name == "sgd":
        keys = ("lr", "weight_decay", "momentum", "dampening", "nesterov")
        return torch.optim.SGD(params, **{k: hp[k] for k in keys if k in hp})
    if name == "adamw":
        return torch.optim.AdamW(params, lr=hp["lr"], weight_decay=hp["weight_decay"], betas=hp["betas"])
    cls = {"sgdp": SGDP, "adamp": AdamP}[name]
    return cls(params, **hp)


def measure(name: str, hp: dict, *, seed: int = 0) -> tuple[float, float]:
    """(RMS angle per step per row in radians, RMS row norm) at equilibrium, stepping the real optimizer."""
    start = equilibrium_norm(name, hp, dim=DIM, grad_scale=G) * START
    steps = math.ceil(BURN_IN * relaxation_time(name, hp)) + WINDOW
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(ROWS, DIM, generator=gen)
    w = torch.nn.Parameter(w / w.norm(dim=1, keepdim=True) * start)
    opt = _build(name, hp, [w])
    angle_sq = norm_sq = 0.0
    for step in range(steps):
        with torch.no_grad():
            rows = w.detach()
            norm = rows.norm(dim=1, keepdim=True)
            unit = rows / norm
            r = torch.randn(ROWS, DIM, generator=gen)
            r -= (r * unit).sum(dim=1, keepdim=True) * unit
            w.grad = G * r / (r.norm(dim=1, keepdim=True) * norm)
            before = rows.double() / rows.double().norm(dim=1, keepdim=True)  # a copy: fp32 -> fp64
        opt.step()
        if step >= steps - WINDOW:
            after = w.detach().double()
            norms = after.norm(dim=1, keepdim=True)
            after = after / norms
            angle = 2 * torch.atan2((before - after).norm(dim=1), (before + after).norm(dim=1))
            angle_sq += angle.square().sum().item()
            norm_sq += norms.square().sum().item()
    return math.sqrt(angle_sq / (ROWS * WINDOW)), math.sqrt(norm_sq / (ROWS * WINDOW))


def _gap(measured: float, predicted: float) -> float:
    return measured / predicted - 1


SGD = dict(lr=0.1, dampening=0.0)
ADAM = dict(lr=1e-2, eps=1e-8)
CASES = {
    # torch.optim.SGD, coupled L2 (Wan et al.; Nesterov derived here)
    "sgd-m0.9": ("sgd", dict(SGD, weight_decay=4e-3, momentum=0.9, nesterov=False)),
    "sgd-m0.9-nesterov": ("sgd", dict(SGD, weight_decay=4e-3, momentum=0.9, nesterov=True)),
    # SGDP projected (derived here)
    "sgdp-m0.9": ("sgdp", dict(SGD, weight_decay=5e-2, momentum=0.9, nesterov=False, wd_ratio=0.1)),
    "sgdp-m0.5-nesterov": ("sgdp", dict(SGD, weight_decay=0.2, momentum=0.5, nesterov=True, wd_ratio=0.1)),
    # AdamW (Kosson et al.)
    "adamw-b0.5": ("adamw", dict(ADAM, weight_decay=0.5, betas=(0.5, 0.99))),
    # AdamP projected (derived here)
    "adamp-b0.5": ("adamp", dict(ADAM, weight_decay=5.0, betas=(0.5, 0.99), nesterov=False, wd_ratio=0.1)),
    "adamp-b0.9-nesterov": (
        "adamp",
        dict(ADAM, weight_decay=5.0, betas=(0.9, 0.99), nesterov=True, wd_ratio=0.1),
    ),
}
# Norm predictions that fail at these settings (docs/equilibrium.md §4): the measured gap.
NORM_FAILS = {
    "adamp-b0.9-nesterov": "measured norm 0.2648 vs predicted 0.3007 (-11.9%) at c = 5e-3, beta1 0.9: "
    "the rotation within one momentum time (docs/equilibrium.md §4)",
}
_measured: dict[str, tuple[float, float]] = {}


def measured(case: str) -> tuple[float, float]:
    """``measure`` of a case, once per session (the angle and norm tests share it)."""
    if case not in _measured:
        _measured[case] = measure(*CASES[case])
    return _measured[case]


@pytest.mark.parametrize("case", list(CASES))
def test_angle_at_equilibrium(case: str) -> None:
    angle, _ = measured(case)
    predicted = angular_update(*CASES[case])
    assert abs(_gap(angle, predicted)) < ANGLE_TOL, (angle, predicted)


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=NORM_FAILS[c])) if c in NORM_FAILS else c
        for c in CASES
    ],
)
def test_norm_at_equilibrium(case: str) -> None:
    _, norm = measured(case)
    name, hp = CASES[case]
    predicted = equilibrium_norm(name, hp, dim=DIM, grad_scale=G)
    assert abs(_gap(norm, predicted)) < NORM_TOL, (norm, predicted)


def test_matched_adamw_rotates_as_adamp() -> None:
    """AdamW at matched_adamw_weight_decay(wd) rotates as AdamP at wd (measured both, same lr and betas)."""
    name, hp = CASES["adamp-b0.5"]
    wd_w = matched_adamw_weight_decay(hp["weight_decay"], wd_ratio=hp["wd_ratio"], beta1=hp["betas"][0])
    assert wd_w == pytest.approx(0.3 * hp["weight_decay"])  # (1 + 0.5) / (1 - 0.5) * 0.1
    adamw = dict(lr=hp["lr"], weight_decay=wd_w, betas=hp["betas"])
    assert angular_update("adamw", adamw) == pytest.approx(angular_update(name, hp), rel=1e-2)
    angle_w, _ = measure("adamw", adamw, seed=1)
    angle_p, _ = measured("adamp-b0.5")
    assert abs(_gap(angle_w, angle_p)) < ANGLE_TOL, (angle_w, angle_p)


def test_formulas_at_the_config_defaults() -> None:
    """The closed forms at the values of configs/optimizer/*.yaml (no stepping)."""
    sgd = dict(lr=0.1, weight_decay=5e-4, momentum=0.9, dampening=0.0, nesterov=False)
    assert angular_update("sgd", sgd) == pytest.approx(math.sqrt(2 * 0.1 * 5e-4 / 1.9))
    assert decay_fraction("sgdp", dict(sgd, wd_ratio=0.1)) == pytest.approx(0.1 * 5e-4 * 0.1 / 0.1)
    adamp = dict(lr=1e-3, weight_decay=5e-2, betas=[0.9, 0.999], wd_ratio=0.1, nesterov=False)
    assert angular_update("adamp", adamp) == pytest.approx(math.sqrt(2 * 1e-3 * 5e-2 * 0.1), rel=1e-5)
    assert angular_update("adamp", dict(adamp, nesterov=True)) == angular_update("adamp", adamp)
    assert angular_update("adamp_noproj", dict(adamp, projection=False)) == angular_update("adamw", adamp)
    assert angular_update("sgdp_noproj", sgd) == pytest.approx(angular_update("sgd", sgd))
    assert matched_adamw_weight_decay(5e-2) == pytest.approx(1.9 * 5e-2)
    assert relaxation_time("adamw", dict(lr=1e-3, weight_decay=0.1, betas=(0.9, 0.9))) == pytest.approx(
        1 / (2 * 1e-4), rel=0.01
    )


@pytest.mark.parametrize("name", ["adam", "lion", "lamb", "rmsprop"])
def test_no_prediction_is_an_error(name: str) -> None:
    with pytest.raises(NoEquilibriumPrediction, match=f"optimizer '{name}'"):
        angular_update(name, dict(lr=1e-3, weight_decay=1e-2))
